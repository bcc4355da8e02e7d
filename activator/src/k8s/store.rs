//! The object store: watched objects of one kind by namespace and name, fed watch events,
//! and re-lists that replace their stream's scope (what was not listed again is gone).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Resource;
use kube::runtime::watcher;

use super::stored::{RoutedDeployment, RoutedService, RoutedSlice};

/// Which watch stream an event comes from: the namespace its API watches, or `None` for all
/// namespaces. A re-list replaces the objects of its stream's scope only.
pub type Scope = Option<String>;

/// Object names in order, each once: a `BTreeSet<String>` in behaviour, without the B-tree's
/// 0.3 KB node for the one name most of these sets hold (the index keeps a few such sets per
/// Service: its slices, the Deployments routed through it, the Services of a selector pair).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Names(Vec<String>);

impl Names {
    /// Adds `name`; false if it was there.
    pub(super) fn insert(&mut self, name: String) -> bool {
        match self.0.binary_search(&name) {
            Ok(_) => false,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, name);
                true
            }
        }
    }

    /// Removes `name`; false if it was not there.
    pub(super) fn remove(&mut self, name: &str) -> bool {
        match self.0.binary_search_by(|n| n.as_str().cmp(name)) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Names {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

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

/// One watch event, with its stream's scope, its objects in the forms the index keeps
/// (`.into()` makes them of `k8s_openapi` objects). Boxed: the objects differ much in size,
/// and the channel to the sync task holds many.
#[derive(Debug)]
pub enum Change {
    /// A Deployment event.
    Deployment(Scope, Box<watcher::Event<RoutedDeployment>>),
    /// A Service event.
    Service(Scope, Box<watcher::Event<RoutedService>>),
    /// An EndpointSlice event.
    EndpointSlice(Scope, Box<watcher::Event<RoutedSlice>>),
    /// A ConfigMap event.
    ConfigMap(Scope, Box<watcher::Event<ConfigMap>>),
}

/// An object before and after one change (`None`: absent).
pub(super) type Replaced<K> = (Option<Arc<K>>, Option<Arc<K>>);

/// Objects of one kind by namespace and name, and the re-list in progress per stream.
///
/// A re-listed object goes into its `Arc` as it arrives: at 10,000 objects a `Vec<K>` of the
/// objects themselves grows by doubling and is then copied into the `Arc`s at the end of the
/// list, a peak the allocator keeps as resident memory after it is freed.
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

#[cfg(test)]
mod tests {
    use super::Names;

    #[test]
    fn names_keep_each_name_once_in_order() {
        let mut n = Names::default();
        assert!(n.insert("b".into()));
        assert!(n.insert("a".into()));
        assert!(n.insert("c".into()));
        assert!(!n.insert("a".into()));
        assert_eq!(n.into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(n.remove("b"));
        assert!(!n.remove("b"));
        assert_eq!(n.into_iter().collect::<Vec<_>>(), ["a", "c"]);
        assert!(n.remove("a") && n.remove("c") && n.is_empty());
    }
}
