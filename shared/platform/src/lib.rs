//! Glue every service shares, so that config, shutdown, telemetry, NATS and Postgres work the
//! same way everywhere:
//!
//! - [`config`]: the environment read once into typed settings, failing fast with the variable's name;
//! - [`shutdown`]: one `CancellationToken` per process, cancelled by SIGTERM or Ctrl-C;
//! - [`telemetry`]: tracing, with W3C trace context carried in NATS headers;
//! - [`bus`]: the JetStream stream, publishing events (id as `Nats-Msg-Id`), dead letters;
//! - [`consumer`]: the one durable pull-consumer loop every consuming service runs;
//! - [`rpc`]: JSON request/reply over NATS for queries between services;
//! - [`db`]: a Postgres pool confined to the service's own schema, with its migrations;
//! - [`metrics`]: every Prometheus family the services export; [`admin`]: the listener that
//!   serves them with the liveness and readiness probes.

pub mod admin;
pub mod bus;
pub mod config;
pub mod consumer;
pub mod db;
pub mod metrics;
pub mod retention;
pub mod rpc;
pub mod shutdown;
pub mod telemetry;
pub mod testing;

pub use secrecy::{ExposeSecret, SecretString};
pub use tokio_util::sync::CancellationToken;
