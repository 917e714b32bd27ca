//! JSON logs to stdout, filtered by `RUST_LOG`.

/// The filter both binaries log with unless `RUST_LOG` says otherwise.
pub const DEFAULT_FILTER: &str = "info,kube=warn";

/// JSON logs to stdout; `RUST_LOG` overrides `default_filter`.
pub fn init_json_logs(default_filter: &str) {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .init();
}
