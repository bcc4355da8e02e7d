//! Kubernetes glue both binaries share, one copy of each rule:
//!
//! - [`client`]: the Kubernetes client from `--kubeconfig` or the inferred configuration;
//! - [`log`]: tracing setup (`RUST_LOG`, default `info`);
//! - [`signal`]: the shutdown signal (SIGTERM or Ctrl-C);
//! - [`watch`]: a watch stream forwarded into a channel, with its retry backoff;
//! - [`events`]: the Event publisher (note truncation, digest, timeout, off the caller's task);
//! - [`endpoints`]: which EndpointSlice endpoints are ready, serving or still draining;
//! - [`admin`]: the small HTTP/1 server of the admin and API ports (method checks, timeouts,
//!   body limit, graceful stop);
//! - [`env`](mod@env): the `ZEROSCALE_<FLAG>` environment names and the deprecated names they replace.
//!
//! The key of a Deployment both binaries use is [`zeroscale_config::DeploymentKey`]: it is a
//! pure value, so it lives in the pure configuration crate, where the autoscaler's index and
//! the activator's table (neither of which knows Kubernetes) can use it.

pub mod admin;
pub mod client;
pub mod endpoints;
pub mod env;
pub mod events;
pub mod log;
pub mod signal;
pub mod watch;

pub use zeroscale_config::DeploymentKey;
