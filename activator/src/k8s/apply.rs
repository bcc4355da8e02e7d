//! The Applier: puts worked-out models into the routing [`Table`], touching only what changed
//! since it last applied them, and collects name conflicts to report once.

use std::collections::{HashMap, HashSet};

use super::resolve::{Desired, DesiredModel};
use crate::queue::Endpoint;
use crate::table::{ModelKey, ModelSpec, Table};

/// Applies [`Desired`] states to a table, touching only what changed.
#[derive(Debug, Default)]
pub struct Applier {
    pub(super) specs: HashMap<ModelKey, ModelSpec>,
    pub(super) endpoints: HashMap<ModelKey, Vec<Endpoint>>,
    pub(super) reported: HashSet<(String, ModelKey)>,
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
            self.upsert(table, m, &mut reports);
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
        reports
    }

    /// Routes one model as `m` says, touching the table only where it differs from what was
    /// applied last. Pushes conflicts not reported before; returns whether the table changed.
    ///
    /// Name conflicts span namespaces; the table arbitrates them over every model it holds
    /// ([`Table::upsert_model`]), so applying one model alone picks the same winner as
    /// applying all of them.
    pub fn upsert(
        &mut self,
        table: &Table,
        m: DesiredModel,
        reports: &mut Vec<ConflictReport>,
    ) -> bool {
        let key = m.spec.key.clone();
        let mut changed = false;
        if self.specs.get(&key) != Some(&m.spec) {
            for c in table.upsert_model(m.spec.clone()) {
                for loser in c.losers {
                    if self.reported.insert((c.name.clone(), loser.clone())) {
                        reports.push(ConflictReport {
                            loser,
                            winner: c.winner.clone(),
                            name: c.name.clone(),
                        });
                    }
                }
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
        true
    }

    /// Every model applied.
    pub(super) fn keys(&self) -> impl Iterator<Item = &ModelKey> {
        self.specs.keys()
    }
}
