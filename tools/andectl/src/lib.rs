//! andectl: the operator's tool. Each subcommand is a module here; `main.rs` only parses the
//! command line and maps errors to exit codes.
//!
//! - [`stack`]: the whole system in one process (`andectl up`, and the end-to-end tests);
//! - [`infra`]: finding, or starting, NATS and Postgres for `up`.

pub mod infra;
pub mod stack;
