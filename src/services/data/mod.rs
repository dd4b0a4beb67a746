//! What the data-plane kinds share, one file per concern:
//! - `fault`: PostgreSQL errors in words without secrets, a lost session
//!   told from a refusal, the time limits on answers;
//! - `pool`: a service's pool of sessions (made by `crate::conn`, with TLS
//!   as the DSN and `tls_ca` say), a round's session, `pool_size` bounds;
//! - `listen`: the insert trigger's notifications on a session of their own;
//! - `adopt`: a kind's table made or adopted, a claimed row's columns,
//!   names derived from a table's;
//! - `leased`: the SQL of a leased work table and a claim's answer;
//! - `horizon`: where a claim starts scanning;
//! - `stats`: backlog and lag on a timer of their own;
//! - `replay`: the replay actions;
//! - `delays`: the pauses before a lost round's and a row's next attempt.

mod adopt;
mod delays;
mod fault;
pub mod horizon;
mod leased;
mod listen;
mod pool;
mod replay;
mod stats;

pub use crate::conn::AbortOnDrop;
pub use adopt::*;
pub use delays::*;
pub use fault::*;
pub use leased::*;
pub use listen::*;
pub use pool::*;
pub use replay::*;
pub use stats::*;
