//! What crosses the detour: a typed [`Route`] per upstream connection, handed from Pingora's
//! `upstream_peer` hook to the relay through an in-process table, never as text a request could
//! carry.
//!
//! The hook registers the route and gets a [`Ticket`]; Pingora writes only the ticket's number
//! into the CONNECT it sends the relay (a header we build, on a socket in a 0700 directory that
//! only this process dials); the relay takes the route back by that number. Nothing of the
//! client's request is ever copied into that CONNECT, and a number that was not registered (or
//! was already taken) finds nothing, so no client can choose the identity an endpoint must
//! present. A ticket that is never taken (Pingora reused a pooled connection, or the request
//! ended first) is removed when the request's context drops it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The CONNECT header that carries a [`Ticket`]'s number to the relay.
pub(crate) const TICKET_HEADER: &str = "x-waypoint-route";

/// How one upstream connection is to be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    /// The endpoint (pod IP and target port).
    pub(crate) address: SocketAddr,
    /// The SPIFFE ID the endpoint's ztunnel must present; `None` for an endpoint outside the
    /// mesh, reached with plain TCP.
    pub(crate) identity: Option<Arc<str>>,
    /// The trace the connection is opened for (ztunnel logs one trace id per tunnel).
    pub(crate) traceparent: Option<String>,
}

/// Routes registered by the HTTP app and not yet taken by the relay.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    pending: Mutex<HashMap<u64, Route>>,
    next: AtomicU64,
    /// One number per identity, for Pingora's pool key: connections made for one identity are
    /// never reused for another. Bounded by the identities the config names.
    groups: Mutex<HashMap<Option<Arc<str>>, u64>>,
}

/// A registered route; dropping it withdraws the route if the relay has not taken it.
#[derive(Debug)]
pub(crate) struct Ticket {
    routes: Arc<Routes>,
    number: u64,
}

impl Ticket {
    /// What goes into the CONNECT's [`TICKET_HEADER`].
    pub(crate) fn number(&self) -> u64 {
        self.number
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.routes.lock().remove(&self.number);
    }
}

impl Routes {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Route>> {
        // Single inserts and removes: a panic while holding the lock leaves the map consistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `route` until the relay takes it or the ticket is dropped.
    pub(crate) fn register(self: &Arc<Self>, route: Route) -> Ticket {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(number, route);
        Ticket {
            routes: self.clone(),
            number,
        }
    }

    /// Takes the route registered under `number`; `None` when there is none (never registered,
    /// already taken, or withdrawn).
    pub(crate) fn take(&self, number: u64) -> Option<Route> {
        self.lock().remove(&number)
    }

    /// The pool group of `identity`: equal for equal identities, distinct otherwise.
    pub(crate) fn group(&self, identity: Option<&Arc<str>>) -> u64 {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let n = groups.len() as u64;
        *groups.entry(identity.cloned()).or_insert(n)
    }

    /// Routes registered and not yet taken or withdrawn.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(identity: Option<&str>) -> Route {
        Route {
            address: "10.0.0.1:8080".parse().unwrap(),
            identity: identity.map(Arc::from),
            traceparent: None,
        }
    }

    #[test]
    fn a_route_is_taken_once_and_only_by_its_number() {
        let routes = Arc::new(Routes::default());
        let a = routes.register(route(Some("spiffe://td/ns/a/sa/a")));
        let b = routes.register(route(None));
        assert_ne!(a.number(), b.number());
        assert_eq!(
            routes.take(u64::MAX),
            None,
            "an unregistered number finds nothing"
        );
        assert_eq!(
            routes.take(a.number()),
            Some(route(Some("spiffe://td/ns/a/sa/a")))
        );
        assert_eq!(routes.take(a.number()), None, "taken once");
        assert_eq!(routes.pending(), 1);
        drop(a);
        drop(b);
        assert_eq!(routes.pending(), 0, "a dropped ticket withdraws its route");
    }

    #[test]
    fn groups_separate_identities() {
        let routes = Routes::default();
        let a: Arc<str> = Arc::from("spiffe://td/ns/a/sa/a");
        let b: Arc<str> = Arc::from("spiffe://td/ns/b/sa/b");
        assert_eq!(
            routes.group(Some(&a)),
            routes.group(Some(&a.to_string().into()))
        );
        assert_ne!(routes.group(Some(&a)), routes.group(Some(&b)));
        assert_ne!(routes.group(Some(&a)), routes.group(None));
        assert_eq!(routes.group(None), routes.group(None));
    }
}
