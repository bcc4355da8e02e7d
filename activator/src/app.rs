//! The activator as a value: its configuration ([`Config`], every flag of the binary), the
//! pieces wired from it ([`App::build`]: metrics, wake signals, routing table, proxy, both
//! listeners), running them ([`App::spawn`]) and the shutdown sequence ([`Running::drain`]).
//! `main` only parses flags and runs this; the component tests start the same `App`, with
//! the table fed by the test instead of a cluster ([`Feed::Local`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use zeroscale_config::{ActivatorConfig, parse_duration};

use crate::k8s::{self, Targets, WatchConfig};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::server::{self, Admin, ProxyWorkers, ServerOptions};
use crate::table::{NoWake, Table, WakeSink};
use crate::wake::{BadUrl, Waker};

/// zeroscale's activator: routes requests to model pods, holds them while a model is at zero,
/// and tells the autoscaler to wake it.
///
/// Every flag `--foo-bar` can be set as `ZEROSCALE_FOO_BAR` (see `zeroscale_kube::env`; the
/// names used before still work for one release, with a warning).
#[derive(Clone, Debug, Parser)]
#[command(name = "activator", version)]
pub struct Config {
    /// Address of the proxy listener (HTTP/1.1 and h2c).
    #[arg(long, env = "ZEROSCALE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ZEROSCALE_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Base URL of the autoscaler's API (wake signals go to {url}/v1/wake). Without it, no
    /// wake signals are sent (the autoscaler still sees queued requests in the metrics).
    #[arg(long, env = "ZEROSCALE_AUTOSCALER_URL")]
    pub autoscaler_url: Option<String>,
    /// The add-on's namespace, where the zeroscale-config ConfigMap lives.
    #[arg(long, env = "POD_NAMESPACE", default_value = "zeroscale-system")]
    pub namespace: String,
    /// Namespaces to route models from, comma-separated; empty means all.
    #[arg(
        long,
        alias = "watch-namespaces",
        env = "ZEROSCALE_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Kubeconfig file; otherwise in-cluster config or $KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "ZEROSCALE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// On SIGTERM, how long queued and in-flight requests may take to finish.
    #[arg(long, env = "ZEROSCALE_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// On SIGTERM, how long to go on accepting new connections with readiness off, before the
    /// drain: the time Service routing (kube-proxy, load balancers) takes to stop sending new
    /// connections here. Without it, a connection that arrives in that window is refused.
    #[arg(long, env = "ZEROSCALE_SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// A client must send its request head within this, once its first byte arrived.
    #[arg(long, env = "ZEROSCALE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// An idle client connection is closed after this (not counted as a rejection).
    #[arg(long, env = "ZEROSCALE_KEEP_ALIVE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub keep_alive_timeout: Duration,
    /// Max size of a request head in bytes.
    #[arg(long, env = "ZEROSCALE_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Proxy worker threads, each with its own runtime; 0 means one per available CPU.
    #[arg(long, env = "ZEROSCALE_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Serve plain HTTP/1.1 requests to models with room through the relay (the fast lane; see
    /// activator/README.md). `false` sends every request through hyper.
    #[arg(long, env = "ZEROSCALE_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub relay: bool,
    /// A model's per-model series stay on `/metrics` this long after its last request, then
    /// leave the page until it has requests again (they keep counting meanwhile), so the page
    /// grows with the active models, not with all of them.
    #[arg(long, env = "ZEROSCALE_IDLE_SERIES_RETENTION", default_value = "5m", value_parser = parse_duration)]
    pub idle_series_retention: Duration,
    /// This instance's name, for Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
}

impl Config {
    /// The flags of the process (and their environment variables, old names included, each
    /// old name with a logged deprecation warning: set up tracing first). Exits on bad flags.
    pub fn from_env() -> Self {
        zeroscale_kube::env::parse(zeroscale_kube::env::ACTIVATOR_RENAMES)
    }

    /// The proxy listener's options.
    pub fn server_options(&self) -> ServerOptions {
        ServerOptions {
            header_read_timeout: self.header_read_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            max_header_bytes: self.max_header_bytes,
            drain_timeout: self.drain_timeout,
            relay: self.relay,
        }
    }

    /// Proxy worker threads: `--workers`, or one per available CPU for 0.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// What feeds the routing table.
pub enum Feed {
    /// The cluster: opted-in Deployments, their Services and EndpointSlices, and the
    /// ConfigMap, watched with a client from `--kubeconfig` (or the inferred configuration);
    /// wake signals go to `--autoscaler-url`. Readiness turns on after the first full sync.
    Kubernetes,
    /// The caller: it fills [`App::table`] itself and sets [`App::ready`]; requests that wait
    /// for a model with no pod are reported to `wake`. Nothing of a cluster is read.
    Local {
        /// Told when requests wait for a model with no eligible pod.
        wake: Arc<dyn WakeSink>,
    },
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Feed::Kubernetes => "Kubernetes",
            Feed::Local { .. } => "Local",
        })
    }
}

/// Why the activator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// `--autoscaler-url` is not a URL.
    #[error(transparent)]
    AutoscalerUrl(#[from] BadUrl),
    /// No Kubernetes client could be made.
    #[error(transparent)]
    Client(#[from] zeroscale_kube::client::ClientError),
    /// The proxy workers could not start.
    #[error("starting the proxy workers: {0}")]
    Workers(std::io::Error),
}

/// The activator, wired and bound, not yet serving.
pub struct App {
    config: Config,
    registry: Registry,
    metrics: Arc<Metrics>,
    table: Arc<Table>,
    proxy: Arc<Proxy>,
    ready: Arc<AtomicBool>,
    listener: TcpListener,
    admin_listener: TcpListener,
    /// The watches, for [`Feed::Kubernetes`].
    kubernetes: Option<(kube::Client, Option<Waker>)>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("config", &self.config).finish()
    }
}

impl App {
    /// The activator of the binary: routes from the cluster ([`Feed::Kubernetes`]).
    pub async fn build(config: Config) -> Result<Self, AppError> {
        Self::build_with(config, Feed::Kubernetes).await
    }

    /// The activator with its table fed by `feed`; binds both listeners.
    pub async fn build_with(config: Config, feed: Feed) -> Result<Self, AppError> {
        let defaults = ActivatorConfig::default();
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.set_idle_series_retention(config.idle_series_retention);
        let (sink, kubernetes): (Arc<dyn WakeSink>, _) = match feed {
            Feed::Local { wake } => (wake, None),
            Feed::Kubernetes => {
                let waker = match &config.autoscaler_url {
                    Some(url) => Some(Waker::new(url, defaults.wake_resend_interval)?),
                    None => {
                        tracing::warn!(
                            "no --autoscaler-url: models at zero are not woken by requests"
                        );
                        None
                    }
                };
                let sink: Arc<dyn WakeSink> = match &waker {
                    Some(w) => Arc::new(w.clone()),
                    None => Arc::new(NoWake),
                };
                (sink, Some(waker))
            }
        };
        let table = Arc::new(Table::new(metrics.clone(), sink));
        let proxy = Proxy::new(
            table.clone(),
            metrics.clone(),
            defaults.max_routing_body_bytes,
        );
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { addr, source })
        };
        let listener = bind(config.listen).await?;
        let admin_listener = bind(config.admin_listen).await?;
        let kubernetes = match kubernetes {
            Some(waker) => Some((
                zeroscale_kube::client::client(config.kubeconfig.as_deref(), |_| {}).await?,
                waker,
            )),
            None => None,
        };
        Ok(Self {
            config,
            registry,
            metrics,
            table,
            proxy,
            ready: Arc::new(AtomicBool::new(false)),
            listener,
            admin_listener,
            kubernetes,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The routing table.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// The proxy.
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Readiness (`/readyz` answers 200 while true).
    pub fn ready(&self) -> &Arc<AtomicBool> {
        &self.ready
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the admin port listens.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin_listener.local_addr()
    }

    /// Starts serving: the watches (if any) and the admin port on the calling runtime, the
    /// proxy on its own worker threads (`--workers`).
    pub fn spawn(self) -> Result<Running, AppError> {
        let workers = self.config.worker_threads();
        let (listener, rest) = self.start();
        let std_listener = listener.into_std().map_err(AppError::Workers)?;
        let proxy_workers = server::spawn_proxy_workers(
            std_listener,
            workers,
            rest.proxy.clone(),
            rest.config.server_options(),
            rest.stop.clone(),
        )
        .map_err(AppError::Workers)?;
        tracing::info!(workers, "proxy workers started");
        Ok(rest.running(Proxying::Workers(proxy_workers)))
    }

    /// Starts serving as [`App::spawn`] does, but the proxy runs on the calling runtime, as one
    /// worker (tests, and programs that bring their own runtime).
    pub fn spawn_local(self) -> Running {
        let (listener, rest) = self.start();
        let stop = rest.stop.clone();
        let task = tokio::spawn(server::serve_proxy(
            listener,
            rest.proxy.clone(),
            rest.config.server_options(),
            stop.cancelled_owned(),
        ));
        rest.running(Proxying::Local(task))
    }

    /// Starts the watches and the admin port; the proxy listener is the caller's to start.
    fn start(self) -> (TcpListener, Started) {
        let Self {
            config,
            registry,
            metrics: _,
            table,
            proxy,
            ready,
            listener,
            admin_listener,
            kubernetes,
        } = self;
        if let Some((client, waker)) = kubernetes {
            tokio::spawn(k8s::run(
                client,
                WatchConfig {
                    namespace: config.namespace.clone(),
                    watch_namespaces: config.namespaces.clone(),
                    instance: config.pod_name.clone(),
                },
                Targets {
                    table,
                    proxy: proxy.clone(),
                    waker,
                    ready: ready.clone(),
                },
            ));
        }
        tokio::spawn(server::serve_admin(
            admin_listener,
            Admin {
                registry: Arc::new(registry),
                ready: ready.clone(),
                feed: proxy.metrics().feed().clone(),
            },
            std::future::pending::<()>(),
        ));
        tracing::info!(listen = %config.listen, admin_listen = %config.admin_listen, "activator started");
        let stop = CancellationToken::new();
        (
            listener,
            Started {
                config,
                proxy,
                ready,
                stop,
            },
        )
    }
}

/// What [`App::start`] leaves for the proxy's start.
struct Started {
    config: Config,
    proxy: Arc<Proxy>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Started {
    fn running(self, proxying: Proxying) -> Running {
        Running {
            ready: self.ready,
            stop: self.stop,
            proxying,
            shutdown_delay: self.config.shutdown_delay,
            drain_timeout: self.config.drain_timeout,
        }
    }
}

enum Proxying {
    Workers(ProxyWorkers),
    Local(tokio::task::JoinHandle<bool>),
}

/// The activator serving; [`Running::drain`] stops it.
pub struct Running {
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
    proxying: Proxying,
    shutdown_delay: Duration,
    drain_timeout: Duration,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

impl Running {
    /// The shutdown sequence: readiness off at once, new connections still accepted for the
    /// shutdown delay (while Service routing moves away), then no new connections and up to the
    /// drain timeout for open requests (queued ones included). True when everything finished in
    /// time.
    pub async fn drain(self) -> bool {
        let shutdown_delay = self.shutdown_delay;
        tracing::info!(
            ?shutdown_delay,
            "shutting down: not ready; accepting until routing has moved away"
        );
        self.ready.store(false, Ordering::SeqCst);
        tokio::time::sleep(shutdown_delay).await;
        tracing::info!("no new connections; draining");
        self.stop.cancel();
        let drained = match self.proxying {
            Proxying::Workers(w) => w.wait().await,
            Proxying::Local(task) => task.await.unwrap_or(false),
        };
        if drained {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!(
                drain_timeout = ?self.drain_timeout,
                "drain timeout passed with requests still open; exiting"
            );
        }
        drained
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (cmd, _warnings) = zeroscale_kube::env::with_old_names(
            Config::command(),
            zeroscale_kube::env::ACTIVATOR_RENAMES,
            |name| env.get(name).cloned(),
        );
        let m = cmd
            .try_get_matches_from(std::iter::once("activator").chain(args.iter().copied()))
            .expect("valid flags");
        Config::from_arg_matches(&m).expect("a config")
    }

    #[test]
    fn the_defaults_are_those_of_the_flags_before() {
        Config::command().debug_assert();
        let c = config(&[], &[]);
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.admin_listen, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(c.autoscaler_url, None);
        assert_eq!(c.namespace, "zeroscale-system");
        assert!(c.namespaces.is_empty());
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.shutdown_delay, Duration::from_secs(5));
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.keep_alive_timeout, Duration::from_secs(75));
        assert_eq!(c.max_header_bytes, 64 * 1024);
        assert_eq!(c.workers, 0);
        assert!(c.relay);
        assert_eq!(c.pod_name, None);
    }

    #[test]
    fn old_flag_and_environment_names_still_work() {
        let c = config(
            &["--watch-namespaces", "a,b", "--relay", "false"],
            &[("DRAIN_TIMEOUT", "7s"), ("ACTIVATOR_WORKERS", "3")],
        );
        assert_eq!(c.namespaces, ["a", "b"]);
        assert!(!c.relay);
        assert_eq!(c.drain_timeout, Duration::from_secs(7));
        assert_eq!(c.workers, 3);
        // With the new name set, the old one is not read (clap reads the new one itself).
        let c = config(
            &[],
            &[("WATCH_NAMESPACES", "old"), ("ZEROSCALE_NAMESPACES", "new")],
        );
        assert!(c.namespaces.is_empty(), "{:?}", c.namespaces);
        // The command line wins over an old name.
        let c = config(&["--drain-timeout", "9s"], &[("DRAIN_TIMEOUT", "7s")]);
        assert_eq!(c.drain_timeout, Duration::from_secs(9));
    }
}
