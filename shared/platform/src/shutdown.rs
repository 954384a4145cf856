//! Graceful shutdown: one [`CancellationToken`] per process. `main` creates it with
//! [`on_signals`]; every service's `run` takes a clone, stops intake when it is cancelled, finishes
//! what is in flight and returns.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or Ctrl-C.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Run the loop `make` builds as its own task until it returns; if it panics, log the panic
/// and start a fresh one after `pause` (unless `shutdown` is cancelled by then). A long-lived
/// loop (a sender, a sweep) that panicked would otherwise be gone silently while the process
/// looks healthy. Returns how many times it was restarted.
pub async fn supervise<F, Fut>(
    name: &'static str,
    shutdown: &CancellationToken,
    pause: std::time::Duration,
    mut make: F,
) -> u32
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut restarts = 0;
    loop {
        match tokio::spawn(make()).await {
            Err(e) if e.is_panic() => {
                let what = panic_text(e.into_panic());
                tracing::error!(task = name, panic = %what, "task panicked; restarting it");
            }
            _ => return restarts,
        }
        tokio::select! {
            _ = shutdown.cancelled() => return restarts,
            _ = tokio::time::sleep(pause) => {}
        }
        restarts += 1;
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_panicking_loop_is_restarted_until_it_returns() {
        let runs = Arc::new(AtomicU32::new(0));
        let stop = CancellationToken::new();
        let r = runs.clone();
        let restarts = supervise("test", &stop, Duration::from_millis(1), move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
            }
        })
        .await;
        assert_eq!((restarts, runs.load(Ordering::SeqCst)), (2, 3));
    }

    #[tokio::test]
    async fn no_restart_after_shutdown() {
        let stop = CancellationToken::new();
        stop.cancel();
        let restarts = supervise("test", &stop, Duration::from_secs(60), || async {
            panic!("boom")
        })
        .await;
        assert_eq!(restarts, 0);
    }
}
