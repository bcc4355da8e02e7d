//! The request gate of one model: its pods with their in-flight counts, a FIFO of requests
//! waiting for capacity (bounded by count and bytes, each with a deadline), and the choice of a
//! pod ([`balance`]).
//!
//! It knows nothing of HTTP or of a metrics library: the caller supplies what a pod's
//! connections are ([`Pool`]) and where the gate's counts go ([`GateMetrics`]); both are type
//! parameters, so the per-request path pays for neither a lookup nor a virtual call. Time is
//! tokio's, so its tests run on a paused clock.

pub mod balance;
mod gate;
mod metrics;

pub use balance::Balance;
pub use gate::{Admit, EJECT_FOR, Endpoint, Gate, Limits, Permit, Pool, QueueError, Ticket};
pub use metrics::{Counts, GateMetrics, NoGauge, PodGauge};
