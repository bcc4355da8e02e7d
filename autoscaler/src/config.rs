//! The autoscaler's configuration: [`Config`], the flags (each with a `ZEROSCALE_<FLAG>`
//! environment fallback, old names read for one release), checked once into [`Settings`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// zeroscale autoscaler: scales opted-in Deployments (annotation zeroscale.dev/enabled: "true")
/// from request concurrency, to and from zero.
#[derive(Clone, Debug, Parser)]
#[command(name = "autoscaler", version)]
pub struct Config {
    /// Kubeconfig file; without it the in-cluster config (or $KUBECONFIG, ~/.kube/config) is used.
    #[arg(long, env = "ZEROSCALE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The autoscaler's own namespace: holds the zeroscale-config ConfigMap and the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "zeroscale-system")]
    pub namespace: String,
    /// Comma-separated namespaces whose Deployments are managed; empty means all namespaces.
    #[arg(
        long,
        env = "ZEROSCALE_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub namespaces: Vec<String>,
    /// Listen address of the wake API (POST /v1/wake).
    #[arg(long, env = "ZEROSCALE_API_LISTEN", default_value = "0.0.0.0:8080")]
    pub api_listen: SocketAddr,
    /// Listen address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ZEROSCALE_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// The activator Service as namespace/name; its EndpointSlices list the activator replicas.
    #[arg(
        long,
        env = "ZEROSCALE_ACTIVATOR_SERVICE",
        default_value = "zeroscale-system/zeroscale-activator"
    )]
    pub activator_service: String,
    /// The activator's metrics port: an EndpointSlice port name or a number.
    #[arg(
        long,
        env = "ZEROSCALE_ACTIVATOR_METRICS_PORT",
        default_value = "metrics"
    )]
    pub activator_metrics_port: String,
    /// Name of the coordination Lease used for leader election.
    #[arg(
        long,
        env = "ZEROSCALE_LEASE_NAME",
        default_value = "zeroscale-autoscaler"
    )]
    pub lease_name: String,
    /// Lease duration in seconds: a standby takes over at most this long after the leader dies.
    #[arg(long, env = "ZEROSCALE_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,
    /// Renew deadline in seconds (fractions allowed): a leader that has not renewed the Lease
    /// for this long stops writing and reports not ready. Must be below the lease duration;
    /// defaults to 2/3 of it (client-go's RenewDeadline 10s for LeaseDuration 15s).
    #[arg(long, env = "ZEROSCALE_LEASE_RENEW_DEADLINE")]
    pub lease_renew_deadline: Option<f64>,
    /// Identity in the Lease and in Events; defaults to the hostname and process id.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Timeout in milliseconds of one API write (scale patch, wake, Event).
    #[arg(long, env = "ZEROSCALE_API_TIMEOUT_MS", default_value_t = 5000)]
    pub api_timeout_ms: u64,
}

impl Config {
    /// The process's flags and environment; old environment names are still read, with a
    /// deprecation warning ([`zeroscale_kube::env`]). Exits on bad flags.
    pub fn from_env() -> Self {
        zeroscale_kube::env::parse::<Self>(zeroscale_kube::env::AUTOSCALER_RENAMES)
    }

    /// The checked settings.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let (act_ns, act_name) = self.activator_service.split_once('/').ok_or_else(|| {
            ConfigError(format!(
                "--activator-service {:?} must be namespace/name",
                self.activator_service
            ))
        })?;
        let lease = Duration::from_secs(self.lease_duration);
        let renew_deadline = match self.lease_renew_deadline {
            None => lease * 2 / 3,
            Some(secs) => Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| !d.is_zero() && *d < lease)
                .ok_or_else(|| {
                    ConfigError(format!(
                        "--lease-renew-deadline {secs} must be above 0 and below --lease-duration {}",
                        self.lease_duration
                    ))
                })?,
        };
        Ok(Settings {
            namespace: self.namespace.clone(),
            namespaces: self
                .namespaces
                .iter()
                .filter(|n| !n.is_empty())
                .cloned()
                .collect(),
            activator_service: (act_ns.to_owned(), act_name.to_owned()),
            activator_metrics_port: self.activator_metrics_port.clone(),
            lease_name: self.lease_name.clone(),
            lease_duration: lease,
            renew_deadline,
            identity: self.identity.clone().unwrap_or_else(default_identity),
            api_timeout: Duration::from_millis(self.api_timeout_ms),
        })
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "autoscaler".into());
    format!("{host}-{}", std::process::id())
}

/// Everything the autoscaler is configured with (worked out from [`Config`]).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The autoscaler's own namespace (ConfigMap, Lease, Events on the ConfigMap).
    pub namespace: String,
    /// Namespaces whose Deployments are managed; empty means all.
    pub namespaces: Vec<String>,
    /// The activator Service: namespace and name.
    pub activator_service: (String, String),
    /// The activator's metrics port: a port name of the EndpointSlice or a number.
    pub activator_metrics_port: String,
    /// Name of the leader Lease.
    pub lease_name: String,
    /// Lease duration: a standby takes over at most this long after the leader dies.
    pub lease_duration: Duration,
    /// A leader that has not renewed the Lease for this long stops writing (and a replica whose
    /// API server has not answered for this long reports not ready). Below `lease_duration`.
    pub renew_deadline: Duration,
    /// This replica's identity in the Lease and in Events.
    pub identity: String,
    /// Timeout of one API write (scale patch, wake, Event).
    pub api_timeout: Duration,
}

/// A flag's value is invalid; the message names the flag, the value and what is allowed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("autoscaler").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn every_renamed_variable_names_a_flag() {
        // Panics when the table and the flags disagree.
        zeroscale_kube::env::with_old_names(
            Config::command(),
            zeroscale_kube::env::AUTOSCALER_RENAMES,
            |_| None,
        );
    }

    #[test]
    fn settings_come_from_the_flags_with_their_defaults() {
        let s = config(&["--namespaces", "a,,b", "--identity", "me"])
            .settings()
            .unwrap();
        assert_eq!(s.namespaces, ["a", "b"]);
        assert_eq!(
            s.activator_service,
            ("zeroscale-system".into(), "zeroscale-activator".into())
        );
        assert_eq!(s.lease_duration, Duration::from_secs(15));
        assert_eq!(s.renew_deadline, Duration::from_secs(10));
        assert_eq!(s.identity, "me");
        assert_eq!(s.api_timeout, Duration::from_millis(5000));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = config(&["--activator-service", "nope"])
            .settings()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"--activator-service "nope" must be namespace/name"#
        );
        let e = config(&["--lease-renew-deadline", "20"])
            .settings()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--lease-renew-deadline 20 must be above 0 and below --lease-duration 15"
        );
    }
}
