//! The HTTP server: the router on hyper, with the limits `axum::serve` leaves out.
//!
//! `axum::serve` builds hyper without a timer, so hyper's header-read timeout is off and a
//! client that opens connections and sends a header byte now and then (slowloris) holds them
//! forever. Here every connection has a deadline for its request head (which also ends a
//! keep-alive connection left idle that long), a deadline for staying idle between requests,
//! and the number of open connections is capped: past the cap new connections wait in the
//! kernel's backlog instead of exhausting the process.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long in-flight requests may finish after shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's head must arrive within this (`GATEWAY_HEADER_TIMEOUT`).
    pub header_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed (`GATEWAY_IDLE_TIMEOUT`).
    pub idle_timeout: Duration,
    /// Open connections at most (`GATEWAY_MAX_CONNECTIONS`).
    pub max_connections: usize,
}

/// Serve `router` on `listener` until `shutdown`; then stop accepting, let requests in flight
/// finish (at most [`SHUTDOWN_GRACE`]) and return.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let app = router
            .clone()
            .map_request(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, app, limits, stop).await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

async fn serve_connection<S>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: S,
    limits: Limits,
    stop: CancellationToken,
) where
    S: tower::Service<hyper::Request<Incoming>, Error = Infallible> + Clone + Send + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send,
{
    let app = app.map_response(axum::response::IntoResponse::into_response);
    let io = IdleTimeout::new(TokioIo::new(stream), limits.idle_timeout);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

/// An I/O object that fails reads once nothing was read for `idle`: hyper then closes the
/// connection. Reads by hyper happen while it waits for the next request, so this bounds how
/// long a keep-alive connection may sit unused.
///
/// A read only notes its time; the timer is moved when it fires early (re-armed for `idle`
/// after the last read). Moving it on every read took the runtime's timer lock several times
/// per request, which `andectl bench --part 5` showed as a few per cent of the gateway's time.
struct IdleTimeout<T> {
    inner: T,
    idle: Duration,
    last_read: tokio::time::Instant,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            last_read: tokio::time::Instant::now(),
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            this.last_read = tokio::time::Instant::now();
            return Poll::Ready(r);
        }
        // Pending: the timer wakes this read when the idle time may be up.
        loop {
            if this.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = this.last_read + this.idle;
            if due <= tokio::time::Instant::now() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection idle too long",
                )));
            }
            // Something was read since the timer was set: wait for the rest of the idle time.
            this.deadline.as_mut().reset(due);
        }
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for IdleTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
