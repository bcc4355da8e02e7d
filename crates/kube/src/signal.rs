//! The shutdown signal: SIGTERM (what the kubelet sends) or Ctrl-C.

/// Resolves at the first SIGTERM or Ctrl-C. If SIGTERM cannot be listened for, that is logged
/// and only Ctrl-C stops the process: a missing handler never panics.
pub async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
