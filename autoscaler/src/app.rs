//! The autoscaler as one value: from a [`Config`] (checked into [`Settings`], see
//! [`crate::config`]), [`App`] builds the client and listeners,
//! [`App::spawn`] starts every task (watches, scrape loops, servers, leader election, the
//! control loop) and [`Running::drain`] stops them. `main` only parses flags and runs it; the
//! component tests start the same `App`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::TryStreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::watcher;
use kube::runtime::{WatchStreamExt, reflector, reflector as reflect};
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use zeroscale_config::GlobalConfig;
use zeroscale_kube::endpoints::SERVICE_NAME_LABEL;
use zeroscale_kube::events::Publisher;
use zeroscale_kube::watch::{WatchBackoff, scoped_api, slim};

use crate::apply::Applier;
pub use crate::config::{Config, ConfigError, Settings};
use crate::controller::{
    CLIENT_READ_TIMEOUT, ControlLoop, Input, WATCH_SILENT_AFTER, forward, watch_client,
    watch_config,
};
use crate::health::Health;
use crate::index::Index;
use crate::lease;
use crate::metrics::Metrics;
use crate::now;
use crate::scrapers as loops;
use crate::server::{self, AdminState, DeploymentCache, WakeState};

/// Why the autoscaler could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A flag's value is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No Kubernetes client.
    #[error(transparent)]
    Client(#[from] zeroscale_kube::client::ClientError),
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// The autoscaler, built and not yet running.
pub struct App {
    client: Client,
    settings: Settings,
    api: TcpListener,
    metrics: TcpListener,
    registry: Registry,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

impl App {
    /// Checks `config`, builds the Kubernetes client and binds both listeners.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let settings = config.settings()?;
        let client = zeroscale_kube::client::client(config.kubeconfig.as_deref(), |c| {
            // Bounds every API call that could hang (kube-lease-manager's have no timeout);
            // long enough that a healthy watch never trips it.
            c.read_timeout = Some(CLIENT_READ_TIMEOUT);
            c.reset_reader_on_write = true;
        })
        .await?;
        let api = bind(config.api_listen).await?;
        let metrics = bind(config.metrics_listen).await?;
        Ok(Self::new(
            client,
            settings,
            api,
            metrics,
            Registry::default(),
        ))
    }

    /// An app from a client and listeners the caller made; its metrics go into `registry`.
    pub fn new(
        client: Client,
        settings: Settings,
        api: TcpListener,
        metrics: TcpListener,
        registry: Registry,
    ) -> Self {
        Self {
            client,
            settings,
            api,
            metrics,
            registry,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Where the wake API listens.
    pub fn api_addr(&self) -> std::io::Result<SocketAddr> {
        self.api.local_addr()
    }

    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.metrics.local_addr()
    }

    /// Starts every task. Returns once leader election has started (it is retried while the
    /// API server is unreachable; the servers answer meanwhile).
    pub async fn spawn(self) -> Running {
        let Self {
            client,
            settings,
            api: api_listener,
            metrics: metrics_listener,
            mut registry,
        } = self;
        let metrics = Arc::new(Metrics::default());
        metrics.register(&mut registry);
        let registry = Arc::new(registry);
        // Watches failing for as long as a leader may go unrenewed are stale: one knob for both.
        let health = Arc::new(Health::new(
            settings.renew_deadline,
            settings.renew_deadline,
            WATCH_SILENT_AFTER,
            now(),
        ));
        let global = Arc::new(RwLock::new(GlobalConfig::default()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };

        let events = Publisher::new(
            client.clone(),
            "zeroscale-autoscaler",
            Some(settings.identity.clone()),
            settings.api_timeout,
        );
        let applier = Applier::new(
            client.clone(),
            events,
            metrics.clone(),
            settings.api_timeout,
        );

        // Watches. One channel into the control loop; bounded so a stuck loop pushes back.
        let (tx, rx) = mpsc::channel::<Input>(1024);
        let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
            vec![None]
        } else {
            settings.namespaces.iter().cloned().map(Some).collect()
        };
        let mut stores = Vec::new();
        let mut tasks = Vec::new();
        for scope in &scopes {
            let in_scope = scope.as_deref().unwrap_or("*");
            let what = format!("deployments/{in_scope}");
            let c = watch_client(&client, &health, &what);
            let deployments: Api<Deployment> = scoped_api(c, scope.as_deref());
            let (reader, mut writer) = reflector::store();
            stores.push((scope.clone(), reader));
            // The store (the wake cache) keeps a smaller copy than the control loop gets:
            // kube-runtime's `reflector` with the stored copy cut first.
            let stream = watcher(deployments, watch_config())
                .backoff(WatchBackoff::default())
                .modify(|d| {
                    slim(d);
                    crate::controller::keep_scaling_fields(d);
                })
                .inspect_ok(move |ev| {
                    writer.apply_watcher_event(&crate::controller::wake_cache_event(ev))
                });
            let s = scope.clone();
            tasks.push(tokio::spawn(forward(
                what,
                stream,
                health.clone(),
                tx.clone(),
                move |e| Some(Input::Deployment(s.clone(), Box::new(e))),
            )));

            let what = format!("hpas/{in_scope}");
            let c = watch_client(&client, &health, &what);
            let hpas: Api<HorizontalPodAutoscaler> = scoped_api(c, scope.as_deref());
            let s = scope.clone();
            let stream = watcher(hpas, watch_config())
                .backoff(WatchBackoff::default())
                .modify(slim);
            tasks.push(tokio::spawn(forward(
                what,
                stream,
                health.clone(),
                tx.clone(),
                move |e| Some(Input::Hpa(s.clone(), Box::new(e))),
            )));
        }
        let what = "configmap".to_owned();
        let configmaps: Api<ConfigMap> =
            Api::namespaced(watch_client(&client, &health, &what), &settings.namespace);
        let cm_config = watch_config().fields(&format!(
            "metadata.name={}",
            zeroscale_config::CONFIGMAP_NAME
        ));
        tasks.push(tokio::spawn(forward(
            what,
            watcher(configmaps, cm_config)
                .backoff(WatchBackoff::default())
                .modify(slim),
            health.clone(),
            tx.clone(),
            |e| Some(Input::ConfigMap(Box::new(e))),
        )));

        let (act_ns, act_name) = settings.activator_service.clone();
        let what = "activator-endpointslices".to_owned();
        let slices_api: Api<EndpointSlice> =
            Api::namespaced(watch_client(&client, &health, &what), &act_ns);
        let slice_config = watch_config().labels(&format!("{SERVICE_NAME_LABEL}={act_name}"));
        let (slice_reader, slice_writer) = reflector::store();
        let slice_stream = reflect(
            slice_writer,
            watcher(slices_api, slice_config)
                .backoff(WatchBackoff::default())
                .modify(slim),
        );
        // Only the reflector store is used; nothing goes to the control loop.
        tasks.push(tokio::spawn(forward(
            what,
            slice_stream,
            health.clone(),
            tx.clone(),
            |_| None,
        )));
        let pod_targets = Arc::new(RwLock::new(Vec::new()));
        tasks.push(tokio::spawn(loops::pod_loop(
            client.clone(),
            pod_targets.clone(),
            global.clone(),
            metrics.clone(),
            tx.clone(),
        )));
        tasks.push(tokio::spawn(loops::activator_loop(
            slice_reader,
            settings.activator_metrics_port.clone(),
            global.clone(),
            metrics.clone(),
            tx.clone(),
        )));

        // Servers.
        let wake_state = WakeState {
            client: client.clone(),
            cache: DeploymentCache { stores },
            global: global.clone(),
            metrics: metrics.clone(),
            applier: applier.clone(),
            timeout: settings.api_timeout,
            pooled_wake: {
                let tx = tx.clone();
                // A full channel drops the hint: the next scrape shows the queue anyway.
                Arc::new(move |key, queued| {
                    let _ = tx.try_send(Input::Wake(key, queued));
                })
            },
        };
        let mut servers = vec![tokio::spawn(server::serve_api(
            api_listener,
            wake_state,
            stopped(),
        ))];
        let admin_state = AdminState {
            registry,
            health: health.clone(),
        };
        servers.push(tokio::spawn(server::serve_admin(
            metrics_listener,
            admin_state,
            stopped(),
        )));

        // The learned state, read once at start (every replica: a standby keeps learning).
        tasks.push(tokio::spawn(crate::learned_store::load(
            client.clone(),
            settings.namespace.clone(),
            settings.api_timeout,
            tx.clone(),
        )));

        let wake_supervisor = Arc::new(Notify::new());
        tasks.push(tokio::spawn(lease::poll_lease(
            client.clone(),
            settings.clone(),
            health.clone(),
            wake_supervisor.clone(),
        )));
        let (elected_rx, lease_task) = lease::start_lease(&client, &settings).await;
        // Holds the election's receiver: aborting it at shutdown releases the Lease.
        tasks.push(tokio::spawn(lease::supervise_lease(
            elected_rx,
            health.clone(),
            metrics.clone(),
            wake_supervisor,
            settings.identity.clone(),
        )));

        let control = ControlLoop {
            index: Index::new(&scopes),
            settings: settings.clone(),
            applier,
            metrics: metrics.clone(),
            global,
            health,
            synced: false,
            tx: tx.clone(),
            buffered_configmap: None,
            pod_targets,
            cold_starts: Default::default(),
            client: client.clone(),
            flusher: crate::learned::Flusher::new(
                GlobalConfig::default().learned_state_flush_interval,
                now(),
            ),
        };
        drop(tx);

        let control = tokio::spawn(async move {
            let mut rx = rx;
            control.run(&mut rx).await
        });
        Running {
            stop_tx,
            tasks,
            servers,
            lease_task,
            control,
        }
    }
}

/// The running autoscaler.
pub struct Running {
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    servers: Vec<JoinHandle<()>>,
    lease_task: JoinHandle<()>,
    control: JoinHandle<()>,
}

impl Running {
    /// Runs until `shutdown` resolves (or the control loop ends), then drains.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) {
        tokio::select! {
            _ = &mut self.control => {}
            () = shutdown => {}
        }
        self.drain().await;
    }

    /// Stops everything: the servers stop accepting and finish what is in flight (bounded
    /// by their drain timeout); the Lease is released so a standby takes over at once.
    pub async fn drain(self) {
        let Self {
            stop_tx,
            tasks,
            servers,
            lease_task,
            control,
        } = self;
        control.abort();
        let _ = stop_tx.send(true);
        for t in &tasks {
            t.abort();
        }
        // The servers stop accepting and let requests in flight finish (bounded by their drain
        // timeout).
        for s in servers {
            let _ = s.await;
        }
        // Aborting the supervisor dropped the election's receiver, which makes the lease task
        // release the Lease so a standby takes over at once; give it a moment.
        let _ = tokio::time::timeout(Duration::from_secs(3), lease_task).await;
    }
}

/// Runs the autoscaler until `shutdown` resolves: the real [`App`], built from a client and
/// listeners the caller made.
pub async fn run(
    client: Client,
    settings: Settings,
    api_listener: TcpListener,
    metrics_listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::controller::RunError> {
    App::new(client, settings, api_listener, metrics_listener, registry)
        .spawn()
        .await
        .run_until(shutdown)
        .await;
    Ok(())
}
