//! What operators read and repair in the event log, shared by `andectl` and the staff console:
//! stored messages decoded from the event descriptors ([`decode`]), one-off reads of a stream
//! ([`scan`]), the environment's streams ([`streams`]) and the dead letters ([`dlq`]).

pub mod decode;
pub mod dlq;
pub mod scan;
pub mod streams;
