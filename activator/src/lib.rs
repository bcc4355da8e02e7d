//! The activator: zeroscale's HTTP data path.
//!
//! Routes each request to its model's ready pods ([`route`], [`table`]), holds requests while a
//! model has no capacity ([`queue`], over the `zeroscale-gate` crate) and tells the autoscaler at
//! once ([`wake`]), balances among pods over pooled connections ([`upstream`]), forwards on the
//! fast lane ([`relay`]) or through hyper ([`proxy`], [`answer`], [`body`], [`hold`]) under one policy
//! ([`forward`]), and counts concurrency ([`metrics`]). Errors become HTTP answers in one place
//! ([`error::rescue`]). [`k8s`] feeds the table from Deployments, Services and EndpointSlices;
//! the rest knows nothing of Kubernetes. [`App`] wires it all from a [`Config`].

pub mod answer;
pub mod app;
pub mod body;
pub mod chunked;
pub mod error;
pub mod forward;
pub mod handoff;
pub mod head;
pub mod hold;
pub mod k8s;
pub mod metrics;
pub mod park;
pub mod peer;
pub mod proxy;
pub mod queue;
pub mod relay;
pub mod route;
pub mod server;
pub mod stat_feed;
pub mod table;
pub mod upstream;
pub mod wake;

pub use app::{App, Config, Feed, Running};
pub use metrics::Metrics;
pub use peer::Peer;
pub use proxy::Proxy;
pub use queue::{Endpoint, Limits};
pub use table::{ModelKey, ModelSpec, Table};
