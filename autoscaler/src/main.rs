//! The `autoscaler` binary: tracing, flags, then the library's [`App`] until SIGTERM or Ctrl-C.

use zeroscale_autoscaler::app::{App, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    zeroscale_kube::log::init();
    let app = App::build(Config::from_env()).await?;
    tracing::info!(
        identity = %app.settings().identity,
        api = %app.api_addr()?,
        metrics = %app.metrics_addr()?,
        "autoscaler starting"
    );
    let running = app.spawn().await;
    running
        .run_until(async {
            zeroscale_kube::signal::shutdown().await;
            tracing::info!("shutting down");
        })
        .await;
    Ok(())
}
