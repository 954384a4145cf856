//! The contracts between our services that are not events: every request/reply method over NATS
//! (`<prefix>.rpc.<service>.<method>`) with its request, its reply and its errors, and the
//! vocabularies (notification states, subscription statuses, …) every crate speaks.
//!
//! Why a Rust crate and not `.proto` beside the events: the events are a durable log replayed
//! months later, so they need protobuf's rules for evolving a schema. Request/reply is live
//! traffic between binaries built from the same workspace, printed as JSON by `andectl` and shown
//! to staff by the gateway; serde types give both ends the same compile-checked shape with one
//! casing on the wire (camelCase), and `sqlx` derives let the services read rows straight into
//! them. Both ends depend on this crate, so a caller cannot send the wrong request or misread a
//! reply: `ande_platform::rpc::call::<M>` and `Responder::method::<M>` are generic over [`Method`].
//!
//! Rules for changing a contract: add optional fields (`#[serde(default)]`) rather than renaming
//! or removing one, as a process of the old build may still be answering while a new one starts.

pub mod error;
pub mod leads;
pub mod notifier;
pub mod vocab;

pub use error::{RpcError, Unavailable};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// One request/reply method: where it is served and what travels each way.
pub trait Method: 'static {
    /// The service answering (`leads`, `notifier`); also its queue group.
    const SERVICE: &'static str;
    /// The method's name, the last token of its subject.
    const NAME: &'static str;
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    type Reply: Serialize + DeserializeOwned + Send + 'static;
}

/// What a responder sends back: `{"ok": reply}` or `{"error": {"code": …}}`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply<T> {
    Ok(T),
    Error(RpcError),
}

/// Declares a method marker type.
macro_rules! method {
    ($(#[$doc:meta])* $name:ident: $service:literal . $method:literal, $req:ty => $rep:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;
        impl $crate::Method for $name {
            const SERVICE: &'static str = $service;
            const NAME: &'static str = $method;
            type Request = $req;
            type Reply = $rep;
        }
    };
}
pub(crate) use method;

/// JSON a customer's mini-program sent (`actionData`, `extra`), kept as the client wrote it. We
/// store and show it but never interpret it, so it crosses services as raw JSON text.
pub type ClientJson = Box<serde_json::value::RawValue>;
