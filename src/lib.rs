//! warden: a supervisor that replaces a fleet of small containers.
//!
//! The data flows through one module per stage:
//!
//! - [`config`]: `services.toml` text in, a typed [`config::Registry`] or
//!   every error out (pure; I/O only through [`config::Sources`]).
//! - [`graph`]: the dependency graph on petgraph: cycles, waves, `--only`.
//! - [`probe`]: one-shot checks of endpoints (TCP, HTTP, PostgreSQL, Redis).
//! - [`conn`]: every connection to PostgreSQL and Redis, and their TLS.
//! - [`services`]: the `Service` trait, its context, and kind factories.
//! - [`supervisor`]: the state machine, restart arithmetic and the event
//!   loop that runs services.
//! - [`api`]: the `api` service: health, readiness and control over HTTP,
//!   and the `/metrics` page.
//! - [`metrics`] (low level): the Prometheus families and their recording.
//! - [`sys`] (low level): the reaper of child processes and process groups.
//! - [`cli`]: the command line; `main.rs` only calls [`cli::main`].

pub mod api;
pub mod cli;
pub mod config;
pub mod conn;
pub mod graph;
pub mod metrics;
pub mod probe;
pub mod services;
pub mod supervisor;
pub mod sys;
