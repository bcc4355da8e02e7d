//! Tracing setup: formatted log lines filtered by `RUST_LOG`, `info` when it is unset.

/// The filter used when `RUST_LOG` is unset or invalid.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global tracing subscriber (formatted lines, `RUST_LOG` filter, default
/// [`DEFAULT_FILTER`]). Call once, first thing in `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_FILTER.into()),
        )
        .init();
}
