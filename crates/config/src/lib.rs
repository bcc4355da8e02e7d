//! zeroscale's configuration model.
//!
//! Global defaults come from the `zeroscale-config` ConfigMap ([`GlobalConfig`]); each opted-in
//! Deployment may override them with `zeroscale.dev/*` annotations ([`DeploymentSettings`]).
//! Precedence: annotation > ConfigMap > built-in default. Parsing never fails as a whole: each
//! bad key yields a [`ConfigError`] and falls back, so one typo never discards the good keys.
//! `docs/configuration.md` documents every key; [`CONFIGMAP_KEYS`] and [`ANNOTATIONS`] are the
//! same tables in code.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//! use zeroscale_config::{DeploymentSettings, GlobalConfig, is_opted_in};
//!
//! let data = BTreeMap::from([
//!     ("stable-window".to_owned(), "2m".to_owned()),
//!     ("max-scale".to_owned(), "ten".to_owned()),
//! ]);
//! let (global, errors) = GlobalConfig::from_configmap(&data, &GlobalConfig::default());
//! assert_eq!(global.scaling.stable_window, Duration::from_secs(120));
//! assert_eq!(
//!     errors[0].to_string(),
//!     r#"max-scale: "ten" is invalid: expected an integer in 0..=10000; keeping the last good value"#
//! );
//!
//! let annotations = BTreeMap::from([
//!     ("zeroscale.dev/enabled".to_owned(), "true".to_owned()),
//!     ("zeroscale.dev/max-scale".to_owned(), "4".to_owned()),
//! ]);
//! assert!(is_opted_in(&annotations));
//! let (settings, errors) = DeploymentSettings::resolve(&global, &annotations);
//! assert!(errors.is_empty());
//! assert_eq!(settings.scaling.max_scale, 4);
//! assert_eq!(settings.scaling.stable_window, Duration::from_secs(120));
//! ```

use std::time::Duration;

mod deployment;
mod event;
pub mod feed;
mod global;
mod key;
mod keys;
pub mod kserve;
mod parse;
mod pool;
mod rules;

pub use deployment::{DEFAULT_POD_METRIC_PATH, MAX_CONTAINER_CONCURRENCY, is_opted_in, opt_in};
pub use event::note_digest;
pub use global::MAX_REPLICAS;
pub use key::DeploymentKey;
pub use keys::{ANNOTATIONS, CONFIGMAP_KEYS, KeyDoc, markdown_table};
pub use parse::{
    MODEL_NAME_RULE, format_bytes, format_duration, parse_bool, parse_bytes, parse_duration,
    validate_model_name,
};
pub use pool::{MILLI, PoolCapacity, format_milli, parse_quantity, replica_units};
pub use rules::MIN_PANIC_WINDOW;
pub use zeroscale_scaling::{Aggregation, Metric, Params, Sizing, ZeroPolicy};

/// Name of the ConfigMap the add-on reads in its own namespace.
pub const CONFIGMAP_NAME: &str = "zeroscale-config";
/// Prefix of every annotation zeroscale reads.
pub const ANNOTATION_PREFIX: &str = "zeroscale.dev/";
/// The opt-in annotation; a Deployment is managed only when it is `"true"`.
pub const ENABLED_ANNOTATION: &str = "zeroscale.dev/enabled";

/// A value as an error message quotes it: in full up to 120 characters, else its first 100 and
/// its length, so a long value never pushes the explanation out of a size-limited Event note.
fn shown(value: &str) -> String {
    if value.chars().count() <= 120 {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(100).collect();
        format!("{head:?}... ({} bytes)", value.len())
    }
}

/// One rejected configuration value. Its `Display` names the key, the bad value and what is
/// allowed and what is used instead, e.g. `zeroscale.dev/max-scale: "-3" is invalid: expected an
/// integer in 0..=10000; using the ConfigMap's value`. A long value is shortened, never the
/// explanation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {} is invalid: {problem}", shown(.value))]
pub struct ConfigError {
    /// The ConfigMap key or full annotation name.
    pub key: String,
    /// The value as written.
    pub value: String,
    /// What is wrong and what is allowed (for an unknown key: the nearest known key).
    pub problem: String,
}

/// Settings of the activator that operators tune globally.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivatorConfig {
    /// Max requests held per model while it has no ready capacity.
    pub queue_depth: usize,
    /// Max request-body bytes held per model's queue.
    pub queue_bytes: u64,
    /// How long a request may wait for capacity before a 504 (default 5 minutes).
    pub queue_deadline: Duration,
    /// Max body bytes buffered to read an OpenAI-style `model` field; beyond it 413.
    pub max_routing_body_bytes: usize,
    /// Re-send a wake signal if a model still has no endpoint after this long.
    pub wake_resend_interval: Duration,
    /// How long a pod may take to send the head of its answer before a 504 (default 10 minutes).
    pub response_timeout: Duration,
    /// How long a request or answer body (a stream) may go without a byte before it is cut
    /// (default 5 minutes).
    pub idle_timeout: Duration,
    /// How requests are spread over a model's pods (`activator-load-balancing`).
    pub load_balancing: LoadBalancing,
    /// Characters of the prompt that make the key of prefix-hash balancing
    /// (`activator-prefix-length`, 256).
    pub prefix_length: u32,
    /// The bound `c` of prefix-hash balancing: no pod above `c` times the mean load
    /// (`activator-prefix-load-factor`, 1.25).
    pub prefix_load_factor: f64,
    /// Answers to requests that waited for a wake carry `zeroscale-cold-start`
    /// (`activator-cold-start-header`, true).
    pub cold_start_header: bool,
    /// A streamed request still queued after this long is answered 200 and held open with
    /// heartbeats (`activator-hold-streams`); `None` (off, the default) never does.
    pub hold_streams: Option<Duration>,
    /// Time between the heartbeats of a held stream (`activator-stream-heartbeat-interval`, 10s).
    pub stream_heartbeat_interval: Duration,
}

/// How the activator spreads a model's requests over its pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadBalancing {
    /// The pod with the fewest requests in flight.
    LeastRequest,
    /// Requests sharing a prompt prefix go to one pod, within a bound on its load.
    PrefixHash,
}

/// The global configuration: built-in defaults overlaid with the ConfigMap's data.
#[derive(Clone, Debug, PartialEq)]
pub struct GlobalConfig {
    /// Default scaling policy for every opted-in Deployment.
    /// `scaling.target` is the target default of `scaling.metric`.
    pub scaling: Params,
    /// `container-concurrency-target-default` (100): the target when the metric is concurrency.
    pub container_concurrency_target_default: f64,
    /// `requests-per-second-target-default` (200): the target when the metric is rps.
    pub requests_per_second_target_default: f64,
    /// Whether a new Deployment may start at 0 (`allow-zero-initial-scale`).
    pub allow_zero_initial_scale: bool,
    /// How often the autoscaler decides (2s).
    pub tick_interval: Duration,
    /// How often the autoscaler scrapes activators and pods (1s).
    pub scrape_interval: Duration,
    /// Timeout of one scrape.
    pub scrape_timeout: Duration,
    /// Activator settings.
    pub activator: ActivatorConfig,
    /// Capacity pools by name (`pools`).
    pub pools: std::collections::BTreeMap<String, PoolCapacity>,
    /// How long a model in a pool stays before it may be evicted for another
    /// (`pool-min-residency`).
    pub pool_min_residency: Duration,
    /// Shortest time between two writes of one shard of the adaptive policy's learned state
    /// (`learned-state-flush-interval`, 5m).
    pub learned_state_flush_interval: Duration,
}

/// Where a Deployment's concurrency comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricSource {
    /// The activators' counters (default).
    Activator,
    /// A gauge scraped from each pod, for traffic that does not pass the activator.
    Pod {
        /// Prometheus metric name, e.g. `vllm:num_requests_running`.
        metric: String,
        /// Port on the pod.
        port: u16,
        /// HTTP path, `/metrics` by default.
        path: String,
    },
}

/// The resolved settings of one opted-in Deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentSettings {
    /// Scaling policy (global defaults overlaid with annotations).
    pub scaling: Params,
    /// Model name for routing; `None` means the Deployment name.
    pub model_name: Option<String>,
    /// Extra Host names routed to this model.
    pub hostnames: Vec<String>,
    /// Service whose EndpointSlices hold the pods; `None` means the Service selecting the pods.
    pub service: Option<String>,
    /// Service port name or number to use; `None` means the first port.
    pub port: Option<String>,
    /// Max requests in flight per pod; 0 = unlimited.
    pub container_concurrency: u32,
    /// Queue deadline for this model.
    pub queue_deadline: Duration,
    /// Time to the first byte of a pod's answer for this model.
    pub response_timeout: Duration,
    /// Longest pause within a request or answer body for this model.
    pub idle_timeout: Duration,
    /// How the activator spreads requests over the pods (`zeroscale.dev/load-balancing`).
    pub load_balancing: LoadBalancing,
    /// Characters of the prompt that make the prefix-hash key (`zeroscale.dev/prefix-length`).
    pub prefix_length: u32,
    /// When this model's streamed requests are held open with heartbeats while it wakes
    /// (`zeroscale.dev/hold-streams`); `None`: never.
    pub hold_streams: Option<Duration>,
    /// Concurrency source.
    pub metric_source: MetricSource,
    /// The capacity pool it belongs to (`zeroscale.dev/pool`, a pool of the ConfigMap).
    pub pool: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_value_is_shortened_and_the_explanation_kept() {
        let e = ConfigError {
            key: "zeroscale.dev/hostnames".into(),
            value: "a".repeat(5000),
            problem: "expected host names; using the ConfigMap's value".into(),
        };
        let text = e.to_string();
        assert!(text.len() < 300, "{} bytes", text.len());
        assert!(text.contains("(5000 bytes)"), "{text}");
        assert!(
            text.ends_with("expected host names; using the ConfigMap's value"),
            "{text}"
        );
        let short = ConfigError {
            value: "-3".into(),
            ..e
        };
        assert!(
            short
                .to_string()
                .starts_with(r#"zeroscale.dev/hostnames: "-3" is invalid"#)
        );
    }
}
