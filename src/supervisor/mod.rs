//! The supervisor: runs every service of a checked registry under its
//! restart policy, event-driven, and stops them in reverse dependency order.

pub mod restart;
pub mod state;
