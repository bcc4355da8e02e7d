//! The Applier: puts worked-out models into the routing [`Table`], touching only what changed
//! since it last applied them, and collects name conflicts to report once.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::resolve::{Desired, DesiredModel};
use crate::queue::Endpoint;
use crate::table::{Conflict, ModelKey, ModelSpec, Table};

/// Applies [`Desired`] states to a table, touching only what changed.
#[derive(Debug, Default)]
pub struct Applier {
    pub(super) specs: HashMap<ModelKey, ModelSpec>,
    pub(super) endpoints: HashMap<ModelKey, Vec<Endpoint>>,
    pub(super) reported: HashSet<(String, ModelKey)>,
    /// The latest claims of each name contested in the batch being applied: reported once
    /// the batch is done, so a winner that changes within the batch is reported as it ends.
    pending: BTreeMap<String, Conflict>,
}

/// A name conflict to report on a losing Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictReport {
    /// The Deployment that does not get the traffic.
    pub loser: ModelKey,
    /// The one that does.
    pub winner: ModelKey,
    /// The contested name or host.
    pub name: String,
}

/// One contested name with the losers newly reported in one sync: the unit of the activator's
/// conflict warning (one log line a name, however many Deployments lost it; each loser still
/// gets its own Event, since that is where its owner looks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameConflict<'a> {
    /// The contested name or host.
    pub name: &'a str,
    /// The Deployment that gets the traffic.
    pub winner: &'a ModelKey,
    /// The Deployments newly reported as not getting it.
    pub losers: Vec<&'a ModelKey>,
}

/// Groups one sync's reports by contested name, in the order the names first appear.
pub fn by_name(reports: &[ConflictReport]) -> Vec<NameConflict<'_>> {
    let mut out: Vec<NameConflict<'_>> = Vec::new();
    for r in reports {
        match out
            .iter_mut()
            .find(|c| c.name == r.name && *c.winner == r.winner)
        {
            Some(c) => c.losers.push(&r.loser),
            None => out.push(NameConflict {
                name: &r.name,
                winner: &r.winner,
                losers: vec![&r.loser],
            }),
        }
    }
    out
}

impl Applier {
    /// Applies the whole of `d`: models not in it leave the table. Returns conflicts not
    /// reported before.
    pub fn apply(&mut self, table: &Table, d: Desired) -> Vec<ConflictReport> {
        let mut seen = HashSet::new();
        let mut reports = Vec::new();
        for (key, errs) in &d.errors {
            for e in errs {
                tracing::debug!(deployment = %key, error = %e, "annotation ignored");
            }
        }
        for m in d.models {
            seen.insert(m.spec.key.clone());
            self.upsert(table, m);
        }
        let gone: Vec<ModelKey> = self
            .specs
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.remove(table, &k);
        }
        self.conflicts_into(&mut reports);
        reports
    }

    /// The conflicts of the batch applied since the last call, with their final winners, that
    /// were not reported before (each contested name and loser once, until the loser wins or
    /// leaves).
    pub fn conflicts_into(&mut self, reports: &mut Vec<ConflictReport>) {
        for (name, c) in std::mem::take(&mut self.pending) {
            // A former loser that now wins is reported again should it lose once more.
            self.reported.remove(&(name.clone(), c.winner.clone()));
            for loser in c.losers {
                if self.reported.insert((name.clone(), loser.clone())) {
                    reports.push(ConflictReport {
                        loser,
                        winner: c.winner.clone(),
                        name: name.clone(),
                    });
                }
            }
        }
    }

    /// Routes one model as `m` says, touching the table only where it differs from what was
    /// applied last; its conflicts wait for [`Applier::conflicts_into`]. Returns whether the
    /// table changed.
    ///
    /// Name conflicts span namespaces; the table arbitrates them over every model it holds
    /// ([`Table::upsert_model`]), so applying one model alone picks the same winner as
    /// applying all of them.
    pub fn upsert(&mut self, table: &Table, m: DesiredModel) -> bool {
        let key = m.spec.key.clone();
        let mut changed = false;
        if self.specs.get(&key) != Some(&m.spec) {
            for c in table.upsert_model(m.spec.clone()) {
                // Each upsert returns all of a name's claims: the last one of the batch is
                // the name's state when the batch ends.
                self.pending.insert(c.name.clone(), c);
            }
            self.specs.insert(key.clone(), m.spec);
            // A renamed model is re-created: push its endpoints again.
            self.endpoints.remove(&key);
            changed = true;
        }
        if self.endpoints.get(&key) != Some(&m.endpoints) {
            table.set_endpoints(&key, m.endpoints.clone());
            self.endpoints.insert(key, m.endpoints);
            changed = true;
        }
        changed
    }

    /// Stops routing a model; returns whether it was routed.
    pub fn remove(&mut self, table: &Table, key: &ModelKey) -> bool {
        if self.specs.remove(key).is_none() {
            return false;
        }
        tracing::info!(deployment = %key, "model no longer routed");
        table.remove_model(key);
        self.endpoints.remove(key);
        self.reported.retain(|(_, l)| l != key);
        // Not reported as a claimant of a batch it left; a name it won waits for a claimant's
        // next change to be reported with the new winner.
        self.pending.retain(|_, c| c.winner != *key);
        for c in self.pending.values_mut() {
            c.losers.retain(|l| l != key);
        }
        true
    }

    /// Every model applied.
    pub(super) fn keys(&self) -> impl Iterator<Item = &ModelKey> {
        self.specs.keys()
    }
}
