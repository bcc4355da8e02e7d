//! The object store: watched objects of one kind by namespace and name, fed watch events,
//! and re-lists that replace their stream's scope (what was not listed again is gone).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::runtime::watcher;

/// Which watch stream an event comes from: the namespace its API watches, or `None` for all
/// namespaces. A re-list replaces the objects of its stream's scope only.
pub type Scope = Option<String>;

/// The kinds of object the activator watches.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Kind {
    /// `apps/v1` Deployments.
    Deployment,
    /// `v1` Services.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlices.
    EndpointSlice,
    /// The `zeroscale-config` ConfigMap.
    ConfigMap,
}

/// One watch event, with its stream's scope. Boxed: the objects differ much in size, and
/// the channel to the sync task holds many.
#[derive(Debug)]
pub enum Change {
    /// A Deployment event.
    Deployment(Scope, Box<watcher::Event<Deployment>>),
    /// A Service event.
    Service(Scope, Box<watcher::Event<Service>>),
    /// An EndpointSlice event.
    EndpointSlice(Scope, Box<watcher::Event<EndpointSlice>>),
    /// A ConfigMap event.
    ConfigMap(Scope, Box<watcher::Event<ConfigMap>>),
}

/// An object before and after one change (`None`: absent).
pub(super) type Replaced<K> = (Option<Arc<K>>, Option<Arc<K>>);

/// Objects of one kind by namespace and name, and the re-list in progress per stream.
///
/// A re-listed object goes into its `Arc` as it arrives: at 10,000 objects a `Vec<K>` of the
/// objects themselves (2.4 KB each for a Deployment) grows by doubling to 39 MB and is then
/// copied into the `Arc`s at the end of the list, a peak the allocator keeps as resident
/// memory after it is freed.
#[derive(Debug)]
pub(super) struct Objects<K> {
    pub(super) by_ns: HashMap<String, BTreeMap<String, Arc<K>>>,
    pub(super) relist: HashMap<Scope, Vec<Arc<K>>>,
}

impl<K> Default for Objects<K> {
    fn default() -> Self {
        Self {
            by_ns: HashMap::new(),
            relist: HashMap::new(),
        }
    }
}

pub(super) fn ns_name<K: Resource>(o: &K) -> (String, String) {
    let m = o.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

impl<K: Resource> Objects<K> {
    pub(super) fn get(&self, ns: &str, name: &str) -> Option<&Arc<K>> {
        self.by_ns.get(ns)?.get(name)
    }

    /// One namespace's objects, by name.
    pub(super) fn namespace(&self, ns: &str) -> Option<&BTreeMap<String, Arc<K>>> {
        self.by_ns.get(ns)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<K>> {
        self.by_ns.values().flat_map(BTreeMap::values)
    }

    /// Applies one watch event; returns what changed.
    pub(super) fn handle(&mut self, scope: &Scope, ev: watcher::Event<K>) -> Vec<Replaced<K>> {
        match ev {
            watcher::Event::Apply(o) => self.put(Arc::new(o)).into_iter().collect(),
            watcher::Event::Delete(o) => {
                let (ns, name) = ns_name(&o);
                self.delete(&ns, &name).into_iter().collect()
            }
            watcher::Event::Init => {
                self.relist.insert(scope.clone(), Vec::new());
                Vec::new()
            }
            watcher::Event::InitApply(o) => {
                self.relist
                    .entry(scope.clone())
                    .or_default()
                    .push(Arc::new(o));
                Vec::new()
            }
            watcher::Event::InitDone => {
                // The listed objects replace the scope's: what was not listed is gone.
                let listed = self.relist.remove(scope).unwrap_or_default();
                let keep: HashSet<(String, String)> =
                    listed.iter().map(|o| ns_name(&**o)).collect();
                let gone: Vec<(String, String)> = self
                    .by_ns
                    .iter()
                    .filter(|(ns, _)| scope.as_ref().is_none_or(|s| s == *ns))
                    .flat_map(|(ns, m)| m.keys().map(|n| (ns.clone(), n.clone())))
                    .filter(|k| !keep.contains(k))
                    .collect();
                let mut out: Vec<Replaced<K>> = gone
                    .iter()
                    .filter_map(|(ns, name)| self.delete(ns, name))
                    .collect();
                out.extend(listed.into_iter().filter_map(|o| self.put(o)));
                out
            }
        }
    }

    /// Stores `o`; `None` if the stored object has the same resourceVersion (no change).
    pub(super) fn put(&mut self, o: Arc<K>) -> Option<Replaced<K>> {
        let (ns, name) = ns_name(&*o);
        let m = self.by_ns.entry(ns).or_default();
        if let Some(old) = m.get(&name)
            && old.meta().resource_version.is_some()
            && old.meta().resource_version == o.meta().resource_version
        {
            return None;
        }
        let old = m.insert(name, o.clone());
        Some((old, Some(o)))
    }

    pub(super) fn delete(&mut self, ns: &str, name: &str) -> Option<Replaced<K>> {
        let m = self.by_ns.get_mut(ns)?;
        let old = m.remove(name)?;
        if m.is_empty() {
            self.by_ns.remove(ns);
        }
        Some((Some(old), None))
    }
}
