//! The activator: zeroscale's HTTP data path.
//!
//! Routes each request to its model's ready pods ([`route`], [`table`]), holds requests while a
//! model has no capacity ([`queue`]) and tells the autoscaler at once ([`wake`]), balances among
//! pods (`zeroscale_gate::balance`) over pooled connections ([`upstream`]), streams bodies both ways ([`proxy`], [`body`]) and counts concurrency
//! ([`metrics`]). Errors become HTTP answers in one place ([`error::rescue`]). [`k8s`] feeds the
//! table from Deployments, Services and EndpointSlices; the rest knows nothing of Kubernetes.

pub mod answer;
pub mod body;
pub mod chunked;
pub mod error;
pub mod forward;
pub mod handoff;
pub mod head;
pub mod k8s;
pub mod metrics;
pub mod park;
pub mod peer;
pub mod proxy;
pub mod queue;
pub mod relay;
pub mod route;
pub mod server;
pub mod table;
pub mod upstream;
pub mod wake;

pub use metrics::Metrics;
pub use peer::Peer;
pub use proxy::Proxy;
pub use queue::{Endpoint, Limits};
pub use table::{ModelKey, ModelSpec, Table};
