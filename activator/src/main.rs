//! The activator binary: tracing, flags, then the library's [`App`] until SIGTERM or Ctrl-C,
//! and its drain.

use zeroscale_activator::{App, Config};

// The proxy runs on its own worker threads (`server::spawn_proxy_workers`); this runtime runs
// the Kubernetes watches, the admin port and signals.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    zeroscale_kube::log::init();
    let running = App::build(Config::from_env()).await?.spawn()?;
    zeroscale_kube::signal::shutdown().await;
    running.drain().await;
    Ok(())
}
