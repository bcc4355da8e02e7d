//! zeroscale's test kit.
//!
//! - [`sample_model`]: a model server (KServe v1/v2, OpenAI style) with tunable load delay,
//!   service time and concurrency limit; also the `sample-model` binary.
//! - [`http_client`]: a tiny HTTP client for tests.

pub mod http_client;
pub mod sample_model;
