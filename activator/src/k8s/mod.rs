//! Kubernetes glue: watches opted-in Deployments, their Services and EndpointSlices, and the
//! `zeroscale-config` ConfigMap, and feeds the [`Table`](crate::table::Table).
//!
//! Working out what should be routed is separate from applying it. [`Index`] holds the watched
//! objects, indexed by namespace and Service, and is fed watch events ([`Change`]); each event
//! marks what it can affect dirty (a Deployment: its model; a Service: its namespace's models;
//! an EndpointSlice: the models routed through its Service; a re-list: what it added, changed
//! or removed; a ConfigMap change: every model), and [`Index::sync`] recomputes only the dirty
//! models and applies what changed ([`Applier`]). So one pod becoming Ready costs the models of
//! one Service, not every watched object. Both are synchronous and unit-tested without a
//! cluster; [`run`] only moves watch events into the index. [`desired`] computes every model
//! from scratch with the same per-model code, for tests and comparisons.
//!
//! Which Service: the `zeroscale.dev/service` annotation, else the Service in the Deployment's
//! namespace whose (non-empty) selector matches the pod template's labels (the first by name if
//! several do). Which port: the `zeroscale.dev/port` annotation (a Service port name or number;
//! a number matching no Service port is used as the pod port directly), else the Service's first
//! port. Endpoints come from the EndpointSlices labelled `kubernetes.io/service-name`, read
//! with the rule both binaries share ([`zeroscale_kube::endpoints`]): `IPv4`/`IPv6` slices,
//! addresses that parse as IPs, each address once, every endpoint with its `ready` and
//! `terminating` conditions (unset: ready, not terminating).
//!
//! Files: `resolve` (which Service, port and endpoints), `store` (objects and re-lists),
//! `stored` (the forms Deployments and Services are kept in: what `resolve` reads),
//! `index` (dirty tracking, incremental sync), `apply` (the table, touched only where it
//! differs), `run` (the watches); `tests/oracle.rs` checks the index against a naive
//! recomputation over random event sequences.

mod apply;
mod index;
mod resolve;
mod run;
mod store;
mod stored;

pub use apply::{Applier, ConflictReport, NameConflict, by_name};
pub use index::{Index, SyncReport, desired};
pub use resolve::{Desired, DesiredModel};
pub use run::{Targets, WatchConfig, run};
pub use store::{Change, Kind, Scope};
pub use stored::{RoutedDeployment, RoutedPort, RoutedService, RoutedSlice};

#[cfg(test)]
mod tests;
