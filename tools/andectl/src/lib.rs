//! andectl: the operator's tool. Each subcommand group is a module here; `main.rs` parses the
//! command line, calls the module of each subcommand with what it parsed, prints the `up`
//! walkthrough, and maps errors to exit codes ([`exit`]).
//!
//! - [`stack`]: the whole system in one process (`andectl up`, and the end-to-end tests);
//! - [`infra`]: finding, or starting, NATS and Postgres for `up`;
//! - [`events`]: `events tail` and `events show`, and [`events::Scan`], the read of a stream
//!   range every other command uses; [`decode`]: stored messages as JSON;
//! - [`replay`]: re-driving a consumer, or copying a range into a scratch prefix;
//! - [`dlq`]: dead letters: list, show, retry, purge;
//! - [`status`]: stream, consumers' lag, dead letters, services' health;
//! - [`users`]: staff accounts; [`leads`]: the leads service's queries;
//! - [`bench`]: the benchmarks, against the raw infrastructure in the same run;
//! - [`conn`]: connecting to NATS and Postgres with errors that name what is unreachable;
//! - [`testing`]: the system-test harness (a whole stack per test), for andectl's and the
//!   services' tests.

pub mod bench;
pub mod bench_chart;
pub mod bench_gateway;
pub mod bench_notifier;
pub mod bench_open;
pub mod conn;
pub use ande_ops::decode;
pub use ande_ops::dlq;
pub mod events;
pub mod exit;
pub mod infra;
pub mod leads;
pub mod notifier;
pub mod replay;
pub mod stack;
pub mod status;
pub mod testing;
pub mod users;
