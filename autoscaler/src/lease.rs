//! Leader election on the coordination Lease, and how its state reaches the rest of the
//! process: the renewal loop (kube-lease-manager), a Lease read every renew interval (the only
//! way renewals become visible), and the supervisor that turns both into the leader gauge,
//! the write gate and log lines.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::{Notify, watch};

use crate::config::Settings;
use crate::health::{self, Health, LeaderStatus};
use crate::metrics::Metrics;
use crate::now;

/// How often the leader renews the Lease (and every replica reads it): a few times per renew
/// deadline, so one slow or failed call does not cost the leadership.
pub fn renew_interval(renew_deadline: Duration) -> Duration {
    (renew_deadline / 4).max(Duration::from_millis(200))
}

/// Builds the leader election, retrying while the API server is unreachable.
pub async fn start_lease(
    client: &Client,
    settings: &Settings,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let duration = settings.lease_duration.as_secs().max(2);
    // kube-lease-manager renews `grace` seconds before expiry, i.e. `duration - grace` after
    // the last renewal: keep that well inside the renew deadline.
    let every = renew_interval(settings.renew_deadline)
        .as_secs()
        .clamp(1, duration - 1);
    let grace = duration - every;
    let mut backoff = Duration::from_millis(200);
    loop {
        let built = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(duration)
            .with_grace(grace)
            .build()
            .await;
        match built {
            Ok(manager) => {
                let (rx, handle) = manager.watch().await;
                let task = tokio::spawn(async move {
                    match handle.await {
                        Ok(Ok(_)) => tracing::info!("leader lease released"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "leader election stopped"),
                        Err(e) => tracing::warn!(error = %e, "leader election task failed"),
                    }
                });
                return (rx, task);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start leader election yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Reads the Lease every [`renew_interval`], each read with a timeout, and records on the
/// board whether the API server answered and when this replica last renewed. This is how
/// renewals become visible: kube-lease-manager reports only changes of holder.
pub async fn poll_lease(
    client: Client,
    settings: Settings,
    health: Arc<Health>,
    wake: Arc<Notify>,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let every = renew_interval(settings.renew_deadline);
    let timeout = settings.api_timeout.min(every.max(Duration::from_secs(1)));
    loop {
        let sent = tokio::time::Instant::now();
        match tokio::time::timeout(timeout, api.get_opt(&settings.lease_name)).await {
            Ok(Ok(lease)) => {
                let at = now();
                let spec = lease.and_then(|l| l.spec);
                let ours = spec
                    .as_ref()
                    .is_some_and(|s| s.holder_identity.as_deref() == Some(&settings.identity));
                let renewed = spec
                    .and_then(|s| s.renew_time)
                    .filter(|_| ours)
                    .map(|t| health::renewed_at(at, SystemTime::now(), t.0.into()));
                health.with(|b| b.lease.record_read(sent.into_std(), at, renewed));
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "reading the Lease failed"),
            Err(_) => tracing::debug!(?timeout, "reading the Lease timed out"),
        }
        wake.notify_one();
        tokio::time::sleep_until(sent + every).await;
    }
}

/// Turns leader election and Lease reads into what the rest of the process sees: the leader
/// gauge, the lost-leadership counter, and one log line per change of leadership or
/// readiness. Wakes up at each renew deadline so a lapse is acted on at once.
pub async fn supervise_lease(
    mut elected: watch::Receiver<bool>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    identity: String,
) {
    let mut status = LeaderStatus::Standby;
    let mut reasons: Vec<String> = Vec::new();
    let mut election_open = true;
    let initially = *elected.borrow_and_update();
    health.with(|b| b.lease.set_elected(initially, now()));
    loop {
        let at = now();
        let (next, next_reasons, deadline, renew_deadline) = health.with(|b| {
            (
                b.lease.status_at(at),
                b.not_ready_at(at),
                b.lease.next_deadline(at),
                b.lease.renew_deadline,
            )
        });
        if !next.same_as(status) {
            metrics.leader.set(i64::from(next.may_write()));
            match (status, next) {
                (LeaderStatus::Leading, LeaderStatus::Lost { unrenewed_for }) => {
                    metrics.leader_lost.inc();
                    tracing::warn!(%identity, "{}", health::lost_message(unrenewed_for, renew_deadline));
                }
                (LeaderStatus::Lost { .. }, LeaderStatus::Leading) => {
                    tracing::info!(%identity, "leadership regained: lease renewed; writing again");
                }
                (_, LeaderStatus::Leading) => tracing::info!(%identity, "leadership acquired"),
                (_, LeaderStatus::Standby) => {
                    tracing::info!(%identity, "standing by: another replica holds the Lease")
                }
                (_, LeaderStatus::Lost { unrenewed_for }) => {
                    tracing::warn!(%identity, "{}", health::lost_message(unrenewed_for, renew_deadline));
                }
            }
        }
        status = next;
        let keys: Vec<String> = next_reasons.iter().map(|r| r.key.clone()).collect();
        if keys != reasons {
            if next_reasons.is_empty() {
                tracing::info!(%identity, "ready");
            } else {
                let texts: Vec<&str> = next_reasons.iter().map(|r| r.text.as_str()).collect();
                tracing::warn!(%identity, reasons = %texts.join("; "), "not ready");
            }
            reasons = keys;
        }
        let deadline = deadline.map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(3600),
            tokio::time::Instant::from_std,
        );
        tokio::select! {
            changed = elected.changed(), if election_open => {
                let leading = changed.is_ok() && *elected.borrow_and_update();
                if changed.is_err() {
                    tracing::warn!("leader election ended; acting as standby");
                    election_open = false;
                }
                health.with(|b| b.lease.set_elected(leading, now()));
            }
            () = wake.notified() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::controller::WATCH_SILENT_AFTER;

    use super::*;

    /// Lets spawned tasks run; on the paused clock this also moves time by `d`.
    async fn settle(d: Duration) {
        tokio::time::sleep(d).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_stops_writing_and_counts_it() {
        let deadline = Duration::from_secs(10);
        let health = Arc::new(Health::new(deadline, deadline, WATCH_SILENT_AFTER, now()));
        let metrics = Arc::new(Metrics::default());
        let wake = Arc::new(Notify::new());
        let (elected_tx, elected_rx) = watch::channel(false);
        let task = tokio::spawn(supervise_lease(
            elected_rx,
            health.clone(),
            metrics.clone(),
            wake.clone(),
            "me".into(),
        ));
        health.with(|b| b.synced = true);

        elected_tx.send(true).unwrap();
        settle(Duration::from_millis(10)).await;
        assert_eq!(metrics.leader.get(), 1);
        assert!(health.may_write_at(now()));

        // No renewal and no Lease read: the deadline passes with no other input.
        settle(Duration::from_secs(10)).await;
        assert_eq!(
            metrics.leader.get(),
            0,
            "still leader past the renew deadline"
        );
        assert_eq!(metrics.leader_lost.get(), 1);
        assert!(!health.may_write_at(now()));
        let reasons = health.not_ready_at(now());
        assert!(
            reasons.iter().any(|r| r.key == "lost-leadership"
                && r.text.starts_with("lost leadership: lease not renewed for")),
            "{reasons:?}"
        );

        // A renewal seen again: writing resumes and readiness returns.
        let at = now();
        health.with(|b| b.lease.record_read(at, at, Some(at)));
        wake.notify_one();
        settle(Duration::from_millis(10)).await;
        assert_eq!(metrics.leader.get(), 1);
        assert_eq!(metrics.leader_lost.get(), 1, "counted once per loss");
        assert!(health.may_write_at(now()));
        assert!(health.not_ready_at(now()).is_empty());

        // Losing the election is not a lost leadership.
        elected_tx.send(false).unwrap();
        settle(Duration::from_millis(10)).await;
        assert_eq!(metrics.leader.get(), 0);
        assert_eq!(metrics.leader_lost.get(), 1);
        task.abort();
    }

    #[test]
    fn renewals_come_well_inside_the_renew_deadline() {
        assert_eq!(
            renew_interval(Duration::from_secs(10)),
            Duration::from_millis(2500)
        );
        assert_eq!(
            renew_interval(Duration::from_millis(400)),
            Duration::from_millis(200)
        );
    }
}
