//! The environment's streams, with an error that names a missing one and how it gets created.

use ande_platform::bus::Bus;
use anyhow::Context;
use async_nats::jetstream::stream::Stream;

/// The environment's event stream, or an error naming it and how it gets created.
pub async fn events_stream(bus: &Bus) -> anyhow::Result<Stream> {
    stream(bus, &bus.subjects.stream()).await
}

/// The environment's dead-letter stream.
pub async fn dlq_stream(bus: &Bus) -> anyhow::Result<Stream> {
    stream(bus, &bus.subjects.dlq_stream()).await
}

pub async fn stream(bus: &Bus, name: &str) -> anyhow::Result<Stream> {
    bus.js.get_stream(name).await.with_context(|| {
        format!(
            "stream {name} is not there (prefix {:?}); every service creates it at start, so run `andectl up` or a service with ANDE_PREFIX={}",
            bus.subjects.prefix(),
            bus.subjects.prefix()
        )
    })
}
