//! The activator's gate: [`zeroscale_gate`] (per-model queue, admission, balancing) over the
//! activator's metrics ([`ModelMetrics`]) and pod connection pools ([`Upstream`]).

use zeroscale_config::{ActivatorConfig, DeploymentSettings, LoadBalancing};
pub use zeroscale_gate::{Balance, EJECT_FOR, Endpoint, Limits, QueueError};

use crate::metrics::ModelMetrics;
use crate::upstream::Upstream;

/// A model's gate: its pods, their in-flight counts and its queue.
pub type Gate = zeroscale_gate::Gate<ModelMetrics, Upstream>;
/// A request counted on a pod; dropping it frees the slot.
pub type Permit = zeroscale_gate::Permit<ModelMetrics, Upstream>;
/// A place in a model's queue.
pub type Ticket = zeroscale_gate::Ticket<ModelMetrics, Upstream>;
/// A model's balancing strategy: its `load-balancing` and `prefix-length` (annotations over the
/// ConfigMap, resolved in `settings`) with the ConfigMap's load factor.
pub fn strategy(settings: &DeploymentSettings, global: &ActivatorConfig) -> Balance {
    match settings.load_balancing {
        LoadBalancing::LeastRequest => Balance::LeastRequest,
        LoadBalancing::PrefixHash => Balance::PrefixHash {
            prefix_chars: settings.prefix_length,
            load_factor: global.prefix_load_factor,
        },
    }
}

/// The outcome of [`Gate::admit`](zeroscale_gate::Gate::admit).
pub type Admit = zeroscale_gate::Admit<ModelMetrics, Upstream>;
