//! The servers in one application's `prometheus-client` registry
//! ([`ServerHandle::register_metrics`](crate::ServerHandle::register_metrics)):
//! one collector per registry, whatever the number of servers, so that each
//! family is written once (`families.rs`), each server's series under its
//! `server` label ([`Builder::name`](crate::Builder::name)).
//!
//! The second server registered must find the collector the first one put
//! there. A `prometheus-client` registry tells nothing of what it holds
//! but its `Debug` text, where each collector writes its own: ours writes
//! its group's token, and a registration looks for a live group's token
//! among the registry's own collectors (its derived `Debug` writes its
//! fields in order, its collectors before its sub-registries; a group in a
//! sub-registry has other names, that registry's prefix or labels, and is
//! not this one's). Formatting the registry costs its `Debug` text once a
//! registration. Should that text change in a later version, each server
//! would get a collector of its own again, repeating the families, and
//! `embed55::two_named_servers_share_one_registry` fails.
//!
//! Two servers in one group must be told apart: each named, the names
//! different. Anything else is refused with [`Error::Config`], not
//! written as series that a scrape refuses or a query adds up.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::error::Error;
use crate::observe::metrics::Snapshot;
use crate::observe::stats::ServerStats;

/// Reads one server's counters, at each scrape.
type Read = Box<dyn Fn() -> ServerStats + Send + Sync>;

/// The servers of one registry.
struct Group {
    /// Unique in the process: its token is `megaconn::metrics::Group(ID)`.
    id: u64,
    servers: Mutex<Vec<(Option<Arc<str>>, Read)>>,
}

impl Group {
    fn token(&self) -> String {
        format!("megaconn::metrics::Group({})", self.id)
    }
}

/// Every group alive (its registry's collector holds it), to be found by
/// its token.
static GROUPS: Mutex<Vec<Weak<Group>>> = Mutex::new(Vec::new());
static NEXT_GROUP: AtomicU64 = AtomicU64::new(1);

/// Registers a server named `name` (read by `stats`) in `registry`: in the
/// group of the servers registered there before, or as a new collector.
pub(crate) fn register(
    registry: &mut Registry,
    name: Option<Arc<str>>,
    stats: impl Fn() -> ServerStats + Send + Sync + 'static,
) -> Result<(), Error> {
    let text = format!("{registry:?}");
    let own = text.split("sub_registries: [").next().unwrap_or(&text);
    let mut groups = GROUPS.lock().unwrap_or_else(PoisonError::into_inner);
    groups.retain(|g| g.strong_count() > 0);
    let found = groups
        .iter()
        .filter_map(Weak::upgrade)
        .find(|g| own.contains(&g.token()));
    if let Some(group) = found {
        let mut servers = group.servers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = servers.iter().find_map(|(there, _)| clash(there, &name)) {
            return Err(Error::Config(why));
        }
        servers.push((name, Box::new(stats) as Read));
        return Ok(());
    }
    let group = Arc::new(Group {
        id: NEXT_GROUP.fetch_add(1, Relaxed),
        servers: Mutex::new(vec![(name, Box::new(stats) as Read)]),
    });
    groups.push(Arc::downgrade(&group));
    registry.register_collector(Box::new(Live(group)));
    Ok(())
}

/// Why a server named `new` cannot join one named `there` in a registry.
fn clash(there: &Option<Arc<str>>, new: &Option<Arc<str>>) -> Option<String> {
    let unnamed = "another megaconn server's series are in this registry already; two servers \
                   in one registry need a name each (Builder::name), to be told apart by \
                   their server label";
    match (there, new) {
        (None, _) | (_, None) => Some(unnamed.to_owned()),
        (Some(a), Some(b)) if a == b => Some(format!(
            "a megaconn server named {b:?} has its series in this registry already: give \
             each server of one registry a name of its own (Builder::name)"
        )),
        _ => None,
    }
}

/// The collector of one registry's group: at each scrape, a snapshot of
/// each server, written together.
struct Live(Arc<Group>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // What a later registration looks for (see the module doc).
        f.write_str(&self.0.token())
    }
}

impl Collector for Live {
    fn encode(&self, e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Read under the lock, written without it (the snapshots are owned).
        let snapshots = {
            let servers = self
                .0
                .servers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            servers
                .iter()
                .map(|(name, read)| (name.clone(), read()))
                .collect()
        };
        Snapshot(snapshots).encode(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(a: Option<&str>, b: Option<&str>) -> Option<String> {
        clash(&a.map(Arc::from), &b.map(Arc::from))
    }

    #[test]
    fn only_different_names_share_a_registry() {
        assert!(names(Some("public"), Some("admin")).is_none());
        assert!(names(Some("public"), Some("public")).is_some());
        assert!(names(None, None).is_some());
        assert!(names(None, Some("admin")).is_some());
        assert!(names(Some("public"), None).is_some());
    }
}
