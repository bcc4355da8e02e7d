//! zeroscale's autoscaler: sizes opted-in Deployments from request concurrency, to and from
//! zero.
//!
//! Working out what should be is separate from applying it (the linkerd2 policy-controller
//! shape):
//! - [`index`]: the pure domain core, fed by events, returning scale intents on each tick;
//! - [`scrape`]: activator (and pod) metrics, parsed and turned into samples; [`scrapers`]:
//!   the two loops that scrape the endpoints the EndpointSlices list, every interval;
//! - [`learned`]: the adaptive policy's learned state kept across failover and restarts in
//!   sharded ConfigMaps (what and when, pure); [`learned_store`]: reading and writing them;
//! - [`pools`]: capacity pools: pooled Deployments' decisions admitted by
//!   [`zeroscale_pool`] (the leader is their only writer);
//! - [`apply`]: the small controller that patches scales (leader only) and records Events;
//! - [`wake`]: `POST /v1/wake`, the fast 0 -> N path any replica serves;
//! - [`coldstart`]: wake -> first Ready pod per Deployment (scheduled, started, ready);
//! - [`beat`]: a client wrapper that turns a watch's responses and bookmarks into signs of
//!   life;
//! - [`health`]: the renew deadline and watch staleness (pure, time passed in), behind the
//!   write gate and `/readyz`;
//! - [`lease`]: leader election on the Lease, its renewals made visible, the write gate;
//! - [`controller`]: the control loop: the one task that owns the index, fed by the watches
//!   (forwarded here), the scrape loops and applied patches; it ticks and hands intents on;
//! - [`config`]: [`config::Config`], the flags, checked into [`config::Settings`];
//! - [`app`]: [`app::App`]: builds, spawns and drains all of it;
//! - [`server`]: the HTTP endpoints (wake API, `/metrics`, `/healthz`, `/readyz`).

pub mod app;
pub mod apply;
pub mod beat;
pub mod coldstart;
pub mod config;
pub mod controller;
pub mod health;
pub mod index;
pub mod learned;
pub mod learned_store;
pub mod lease;
pub mod metrics;
pub mod pools;
pub mod scrape;
pub mod scrapers;
pub mod server;
pub mod wake;

/// A Deployment's namespace and name: the autoscaler's key (the one key type of both binaries).
pub use zeroscale_config::DeploymentKey;

/// The time the health board is judged in: tokio's clock, so tests can pause it.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
