//! zeroscale's test kit.
//!
//! - [`sample_model`]: a model server (KServe v1/v2, OpenAI style) with tunable load delay,
//!   service time and concurrency limit; also the `sample-model` binary.
//! - [`http_client`]: a tiny HTTP client for tests.
//! - [`LocalCluster`] ([`cluster`]): etcd, kube-apiserver and kube-controller-manager built from
//!   source (`scripts/build-control-plane.sh`), plus the process [`kubelet`].
//! - [`node`]: a real node (containerd, runc, CNI, kubelet, kube-proxy, CoreDNS) for
//!   [`LocalCluster`] with `real_node`.
//! - [`netns`]: run a test binary inside a private network namespace (pods get 10.244.x.y).
//! - [`bins`]: where the control-plane and workspace binaries are.
//! - [`process`]: owned child processes and the leak check.
//! - [`wait`]: [`wait::eventually`], polling for a condition with a limit.

pub mod addon;
pub mod bins;
pub mod certs;
pub mod cluster;
pub mod error;
pub mod http_client;
pub mod kubelet;
pub mod netns;
pub mod node;
pub mod process;
pub mod sample_model;
pub mod wait;

pub use bins::{k8s_bin_dir, workspace_bin};
pub use cluster::{ClusterError, ClusterOptions, LocalCluster};
