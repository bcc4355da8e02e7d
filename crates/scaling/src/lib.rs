//! zeroscale's scaling engine: pure, deterministic, and clock-free.
//!
//! Time enters as an argument (`now`), so every behaviour is testable without a clock, tokio or
//! Kubernetes.

mod params;

pub use params::{Aggregation, Metric, Params};
