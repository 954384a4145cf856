//! HTTP clients with TLS from rustls' ring provider. reqwest's default TLS provider is aws-lc,
//! whose C build needs cmake and minutes of a 2-core machine; ring is already in the tree (NATS
//! uses it). rustls then needs the provider installed process-wide before a client is built.

use std::sync::Once;

/// Install ring as the process's TLS provider (once; later calls do nothing).
pub fn install_tls_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err only when another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder whose TLS works; use it instead of `reqwest::Client::builder()`.
pub fn builder() -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder()
}

/// A default client; use it instead of `reqwest::Client::new()`.
pub fn client() -> reqwest::Client {
    builder()
        .build()
        .expect("an HTTP client with default settings")
}
