//! The sync thread: applies watcher updates to the [`Store`], debounces them, and publishes
//! snapshots. Policies are recompiled only when a policy (or what binds it) changed; endpoint,
//! pod and service changes update the destinations of the services they touch.
//!
//! It runs on its own OS thread: compiling 10,000 policies takes a while, and the runtime's
//! worker threads carry traffic.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_api_bindings::destinations::ServiceRef;
use gateway_api_bindings::mesh_rules::WaypointRule;
use gateway_api_bindings::well_known::SERVICE_NAME_LABEL;
use gateway_api_bindings::{Kind, LoadError, Object, ObjectKey, Origin, Store, limits, status};
use policy_engine::Action;

use super::mesh_config::MeshConfig;
use super::mesh_config::MeshOverrides;
use super::watch::{Invalid, Parsed, Update};
use crate::authn::jwks::JwksRegistry;
use crate::metrics::Metrics;
use crate::state::assemble::{Assembled, Assembler, Changes, Validation, report_findings};
use crate::state::{MeshSettings, StateHandle};

/// What the status writer needs besides the store, published after each snapshot.
#[derive(Debug, Clone, Default)]
pub struct StatusInput {
    pub synced: bool,
    pub settings: MeshSettings,
    /// Objects kept out of the snapshot, with why.
    pub invalid: BTreeMap<(Kind, ObjectKey), Invalid>,
    /// Bumped whenever something that status depends on changed.
    pub epoch: u64,
}

/// What the updates since the last snapshot touched.
#[derive(Debug, Default)]
struct Dirty {
    /// What the assembler must rebuild.
    snapshot: Changes,
    /// Something the status writer reads changed.
    status: bool,
}

impl Dirty {
    fn any(&self) -> bool {
        self.status || self.snapshot.any()
    }

    fn status_only(&self) -> bool {
        self.status && !self.snapshot.any()
    }
}

#[allow(missing_debug_implementations)] // holds channels and handles only
pub struct StateUpdater {
    pub gateway: ObjectKey,
    /// Flags: they win over the mesh ConfigMap.
    pub mesh: MeshOverrides,
    pub handle: Arc<StateHandle>,
    pub metrics: Arc<Metrics>,
    pub jwks: Arc<JwksRegistry>,
    pub status: tokio::sync::watch::Sender<Arc<StatusInput>>,
    /// Quiet period that ends a burst of updates, and the longest a burst may delay a snapshot.
    pub quiet: Duration,
    pub max_delay: Duration,
}

struct State {
    cfg: StateUpdater,
    store: Arc<Mutex<Store>>,
    mesh_config: Option<MeshConfig>,
    settings: MeshSettings,
    pending: BTreeSet<Kind>,
    mesh_pending: bool,
    synced: bool,
    invalid: BTreeMap<(Kind, ObjectKey), Invalid>,
    assembler: Assembler,
    dirty: Dirty,
    epoch: u64,
}

impl StateUpdater {
    /// Runs until every watcher is gone.
    pub fn run(self, rx: Receiver<Update>) {
        let mut st = State::new(self);
        loop {
            let Ok(first) = rx.recv() else { return };
            let burst = Instant::now();
            st.update(first);
            loop {
                let left = st.cfg.max_delay.saturating_sub(burst.elapsed());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(st.cfg.quiet.min(left)) {
                    Ok(u) => st.update(u),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            if st.pending.is_empty() && !st.mesh_pending {
                st.publish(burst);
            }
        }
    }
}

impl State {
    fn new(cfg: StateUpdater) -> State {
        let store = cfg.handle.objects_handle();
        let settings = cfg.mesh.resolve(None, Some(&cfg.gateway));
        {
            let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
            // istiod's rule: only a Gateway with status.addresses is a waypoint.
            s.rules.waypoints = WaypointRule::StatusAddresses;
            s.rules.service_entry_visibility = settings.service_entry_visibility.clone();
        }
        State {
            store,
            settings,
            mesh_config: None,
            pending: Kind::ALL.into_iter().collect(),
            mesh_pending: true,
            synced: false,
            invalid: BTreeMap::new(),
            assembler: Assembler::new(Validation::AsIstiod),
            dirty: Dirty::default(),
            epoch: 0,
            cfg,
        }
    }

    fn update(&mut self, u: Update) {
        match u {
            Update::Apply(kind, parsed) => {
                let store = self.store.clone();
                let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
                self.apply(&mut store, kind, parsed, true);
            }
            Update::Delete(kind, key) => {
                let store = self.store.clone();
                let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
                self.mark(&store, kind, &key, None, true);
                store.remove(kind, &key);
                if self.invalid.remove(&(kind, key)).is_some() {
                    self.dirty.status = true;
                }
            }
            Update::Relist(kind, objects) => {
                let store = self.store.clone();
                let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
                let listed: HashSet<ObjectKey> = objects
                    .iter()
                    .map(|p| match p {
                        Ok(o) => o.key(),
                        Err(i) => i.key.clone(),
                    })
                    .collect();
                for key in store.keys(kind) {
                    if !listed.contains(&key) {
                        store.remove(kind, &key);
                    }
                }
                self.invalid
                    .retain(|(k, key), _| *k != kind || listed.contains(key));
                for p in objects {
                    self.apply(&mut store, kind, p, false);
                }
                self.mark_kind(kind);
                if self.pending.remove(&kind) {
                    tracing::info!(%kind, objects = listed.len(), "initial list done");
                }
            }
            Update::MeshConfig(mc) => {
                if mc != self.mesh_config {
                    self.mesh_config = mc;
                    let settings = self
                        .cfg
                        .mesh
                        .resolve(self.mesh_config.as_ref(), Some(&self.cfg.gateway));
                    if settings != self.settings {
                        tracing::info!(root_namespace = %settings.root_namespace, trust_domain = %settings.trust_domain, path_normalization = ?settings.path_normalization, "mesh settings changed");
                        self.store
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .rules
                            .service_entry_visibility = settings.service_entry_visibility.clone();
                        self.settings = settings;
                        self.dirty.snapshot.settings = true;
                        self.dirty.snapshot.policies = true;
                        self.dirty.status = true;
                    }
                }
            }
            Update::MeshConfigSynced => self.mesh_pending = false,
        }
    }

    /// Applies one object. `fine`: mark exactly what it touches (a relist marks its whole kind).
    fn apply(&mut self, store: &mut Store, kind: Kind, parsed: Parsed, fine: bool) {
        let object = match parsed.and_then(|o| self.readable(o)) {
            Ok(o) => o,
            Err(inv) => {
                self.cfg.metrics.kube_invalid_objects.inc();
                let kept = store.contains(kind, &inv.key);
                tracing::warn!(%kind, object = %inv.key, error = %inv.error, previous_version_kept = kept, "invalid object not applied");
                self.invalid.insert((kind, inv.key.clone()), *inv);
                self.dirty.status = true;
                return;
            }
        };
        let key = object.key();
        if self.invalid.remove(&(kind, key.clone())).is_some() {
            self.dirty.status = true;
        }
        if !unchanged(store, &object) {
            self.report_refused(store, &object);
        }
        if fine {
            self.mark(store, kind, &key, Some(&object), false);
        }
        store.apply(object, Origin::default());
        if fine && kind == Kind::EndpointSlice {
            // The new slice's service, now that it is indexed.
            self.mark(store, kind, &key, None, false);
        }
    }

    /// Keeps out what no Istio proxy could ever be given, as an object that cannot be read: an
    /// AuthorizationPolicy whose action is none of Istio's (the CRD's enum keeps the API server
    /// from storing it, and istiod's protobuf decoder cannot read it). Everything else is
    /// applied, whatever istiod's webhook would say: istiod compiles such objects anyway, so
    /// keeping one out (or keeping its previous version) would make this waypoint more
    /// permissive than Istio's (`docs/authz.md`, "Invalid objects in a cluster").
    fn readable(&self, o: Object) -> Result<Object, Box<Invalid>> {
        let Object::AuthorizationPolicy(ap) = &o else {
            return Ok(o);
        };
        let Some(action) = ap
            .spec
            .action
            .as_deref()
            .filter(|a| Action::parse(a).is_none())
        else {
            return Ok(o);
        };
        let key = o.key();
        Err(Box::new(Invalid {
            error: LoadError {
                origin: Origin::default(),
                object: format!("{} {key}", o.kind()),
                field: " field spec.action".into(),
                message: format!(
                    "unknown action \"{}\" (expected ALLOW, DENY, AUDIT or CUSTOM): outside the \
                     CRD's enum, never enforced by Istio",
                    limits::shown(action)
                ),
            },
            key,
            generation: ap.metadata.generation,
            object: Some(Box::new(o)),
        }))
    }

    /// Counts and logs a new or changed policy that istiod's webhook would have refused. It is
    /// applied all the same; its status names the fields (the status writer computes it from
    /// the store).
    fn report_refused(&self, store: &Store, o: &Object) {
        let root = &self.settings.root_namespace;
        let errors = match o {
            Object::AuthorizationPolicy(ap) => status::authorization_policy(store, ap, root).errors,
            Object::RequestAuthentication(ra) => {
                status::request_authentication(store, ra, root).errors
            }
            _ => return,
        };
        if errors.is_empty() {
            return;
        }
        self.cfg.metrics.kube_invalid_objects.inc();
        let list: Vec<String> = errors
            .iter()
            .take(limits::MAX_ERRORS_PER_OBJECT)
            .map(|e| format!("{}: {}", e.field, limits::shown(&e.message)))
            .collect();
        tracing::warn!(
            kind = %o.kind(),
            object = %o.key(),
            errors = %list.join("; "),
            "object istiod's webhook would refuse: applied as istiod builds it"
        );
    }

    /// Marks what a change to `key` touches. `new`: the incoming object (for Apply), or `None`
    /// for a delete (or to re-read the stored version).
    fn mark(
        &mut self,
        store: &Store,
        kind: Kind,
        key: &ObjectKey,
        new: Option<&Object>,
        delete: bool,
    ) {
        let d = &mut self.dirty;
        match kind {
            // Not watched (only `waypoint analyze` reads it): nothing of ours depends on it.
            Kind::PeerAuthentication => {}
            Kind::Gateway => {
                // What membership reads: spec (listeners, allowedRoutes), labels (waypoint-for),
                // annotations (inbound binding) and whether status.addresses is empty (istiod's
                // waypoint rule).
                let has_addresses = |g: &gateway_api::apis::standard::gateways::Gateway| {
                    g.status
                        .as_ref()
                        .and_then(|s| s.addresses.as_ref())
                        .is_some_and(|a| !a.is_empty())
                };
                let same = match new {
                    Some(Object::Gateway(g)) => store.gateways.get(key).is_some_and(|old| {
                        old.object.spec == g.spec
                            && old.object.metadata.labels == g.metadata.labels
                            && old.object.metadata.annotations == g.metadata.annotations
                            && has_addresses(&old.object) == has_addresses(g)
                    }),
                    _ => false,
                };
                // Status writes change nothing the snapshot reads; on our own Gateway they are
                // what the status writer compares with (addresses must never go missing).
                if same && !delete {
                    if *key == self.cfg.gateway {
                        d.status = true;
                    }
                    return;
                }
                d.status = true;
                // Any waypoint may be a Service's primary while we are its canary.
                d.snapshot.destinations.everything = true;
                if *key == self.cfg.gateway {
                    d.snapshot.policies = true;
                }
            }
            Kind::GatewayClass => {
                // Its `istio.io/waypoint-for` and inbound binding decide attachment too.
                d.snapshot.policies = true;
                d.snapshot.destinations.everything = true;
                d.status = true;
            }
            Kind::Namespace => {
                d.snapshot.destinations.everything = true;
                d.status = true;
            }
            Kind::Service => {
                d.snapshot
                    .destinations
                    .services
                    .insert(ServiceRef::Service(key.clone()));
                d.status = true;
            }
            Kind::ServiceEntry => {
                d.snapshot
                    .destinations
                    .services
                    .insert(ServiceRef::ServiceEntry(key.clone()));
                d.status = true;
            }
            Kind::EndpointSlice => {
                let svc = |labels: Option<&BTreeMap<String, String>>| {
                    labels
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .map(|n| ServiceRef::Service(ObjectKey::new(&key.namespace, n.clone())))
                };
                let old = store
                    .endpoint_slices
                    .get(key)
                    .and_then(|s| svc(s.object.metadata.labels.as_ref()));
                let new = match new {
                    Some(Object::EndpointSlice(s)) => svc(s.metadata.labels.as_ref()),
                    _ => None,
                };
                d.snapshot
                    .destinations
                    .services
                    .extend(old.into_iter().chain(new));
            }
            Kind::Pod => {
                d.snapshot.destinations.pods.insert(key.clone());
            }
            Kind::WorkloadEntry => {
                d.snapshot.destinations.workload_entries.insert(key.clone());
            }
            Kind::AuthorizationPolicy => {
                let same = new.is_some_and(|o| unchanged(store, o));
                // A status-only change (our own writes among them) compiles nothing, but the
                // status writer looks again: another writer's apply replaces the whole
                // conditions list and may have dropped ours.
                if !same || delete {
                    d.snapshot.policies = true;
                }
                d.status = true;
            }
            Kind::RequestAuthentication => {
                let same = new.is_some_and(|o| unchanged(store, o));
                if !same || delete {
                    d.snapshot.authn = true;
                }
                d.status = true;
            }
        }
    }

    fn mark_kind(&mut self, kind: Kind) {
        let d = &mut self.dirty;
        d.status = true;
        match kind {
            Kind::AuthorizationPolicy => d.snapshot.policies = true,
            Kind::GatewayClass => {
                d.snapshot.policies = true;
                d.snapshot.destinations.everything = true;
            }
            Kind::RequestAuthentication => d.snapshot.authn = true,
            Kind::Gateway => {
                d.snapshot.policies = true;
                d.snapshot.destinations.everything = true;
            }
            _ => d.snapshot.destinations.everything = true,
        }
    }

    fn publish(&mut self, burst: Instant) {
        let first = !self.synced;
        if !first && !self.dirty.any() {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        if !first && dirty.status_only() {
            // Nothing the snapshot reads changed (status echoes): only the status writer looks.
            self.publish_status();
            return;
        }
        let started = Instant::now();
        let store = self.store.clone();
        let store = store.lock().unwrap_or_else(|p| p.into_inner());
        let assembled =
            self.assembler
                .assemble(&store, &self.settings, &self.cfg.jwks, &dirty.snapshot);
        drop(store);
        let Assembled {
            snapshot,
            policies_recompiled: recompiled,
            fresh,
        } = match assembled {
            Ok(a) => a,
            Err(e) => {
                // Cannot happen with our Gateway named (this source refuses no object at
                // assembly); should it, the last snapshot keeps serving.
                self.cfg.metrics.config_reload_failures.inc();
                tracing::error!(error = %e, "config snapshot not assembled");
                return;
            }
        };
        report_findings(&self.cfg.gateway, &fresh, &self.cfg.metrics);
        let version = snapshot.version;
        let d = &snapshot.destinations;
        tracing::info!(
            version,
            services = d.services.len(),
            workloads = d.workloads.len(),
            policies = snapshot.authorizer.policies().len(),
            policies_recompiled = recompiled,
            build_ms = started.elapsed().as_millis() as u64,
            since_first_event_ms = burst.elapsed().as_millis() as u64,
            "config snapshot published"
        );
        self.cfg.handle.publish(snapshot);
        self.cfg.metrics.config_reloads.inc();
        self.cfg
            .metrics
            .config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        if first {
            self.synced = true;
            self.cfg.handle.mark_synced();
        }
        if first || dirty.status {
            self.publish_status();
        }
    }

    fn publish_status(&mut self) {
        self.epoch += 1;
        let input = StatusInput {
            synced: true,
            settings: self.settings.clone(),
            invalid: self.invalid.clone(),
            epoch: self.epoch,
        };
        self.cfg.status.send_replace(Arc::new(input));
    }
}

/// Whether `new` holds what the stored version of the same policy already holds: its spec and
/// its annotations (`istio.io/dry-run` is one). Our own status writes come back as such
/// updates. Always false for other kinds.
fn unchanged(store: &Store, new: &Object) -> bool {
    match new {
        Object::AuthorizationPolicy(ap) => store
            .authorization_policies
            .get(&new.key())
            .is_some_and(|old| {
                old.object.spec == ap.spec
                    && old.object.metadata.annotations == ap.metadata.annotations
            }),
        Object::RequestAuthentication(ra) => store
            .request_authentications
            .get(&new.key())
            .is_some_and(|old| {
                old.object.spec == ra.spec
                    && old.object.metadata.annotations == ra.metadata.annotations
            }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Snapshot;

    const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo, generation: 1}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
";
    const POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: demo, generation: 1}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{}]
";

    fn object(kind: Kind, yaml: &str) -> Object {
        let value: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        Store::parse_as(kind, value, &Origin::default()).unwrap()
    }

    fn state() -> (State, tokio::sync::watch::Receiver<Arc<StatusInput>>) {
        let gateway = ObjectKey::new("demo", "waypoint");
        let mesh = MeshOverrides::default();
        let settings = mesh.resolve(None, Some(&gateway));
        let metrics = Arc::new(Metrics::default());
        let (status, status_rx) = tokio::sync::watch::channel(Arc::default());
        let cfg = StateUpdater {
            gateway,
            mesh,
            handle: StateHandle::unsynced(Snapshot::empty(&settings)),
            jwks: JwksRegistry::new(Default::default(), None, metrics.clone()),
            metrics,
            status,
            quiet: Duration::ZERO,
            max_delay: Duration::ZERO,
        };
        (State::new(cfg), status_rx)
    }

    /// Lists every kind (empty but for `objects`) and publishes the first snapshot.
    fn synced(
        objects: Vec<(Kind, &str)>,
    ) -> (State, tokio::sync::watch::Receiver<Arc<StatusInput>>) {
        let (mut st, rx) = state();
        for kind in Kind::ALL {
            let listed = objects
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(k, y)| Ok(object(*k, y)))
                .collect();
            st.update(Update::Relist(kind, listed));
        }
        st.update(Update::MeshConfig(None));
        st.update(Update::MeshConfigSynced);
        st.publish(Instant::now());
        assert!(st.cfg.handle.is_synced());
        (st, rx)
    }

    #[test]
    fn a_policy_change_recompiles_and_its_status_echo_does_not() {
        let (mut st, _rx) = synced(vec![(Kind::Gateway, GATEWAY)]);
        assert!(!st.dirty.any());
        st.update(Update::Apply(
            Kind::AuthorizationPolicy,
            Ok(object(Kind::AuthorizationPolicy, POLICY)),
        ));
        assert!(st.dirty.snapshot.policies && st.dirty.status);
        st.publish(Instant::now());
        assert_eq!(st.cfg.handle.load().authorizer.policies().len(), 1);
        // Our own status write comes back as an update with the same spec: nothing to rebuild,
        // only the status writer looks again (another writer's apply replaces the whole
        // conditions list and may have dropped ours; issue 16).
        let echo = format!("{POLICY}status: {{conditions: []}}\n");
        st.update(Update::Apply(
            Kind::AuthorizationPolicy,
            Ok(object(Kind::AuthorizationPolicy, &echo)),
        ));
        assert!(
            !st.dirty.snapshot.any() && st.dirty.status,
            "{:?}",
            st.dirty
        );
        // So is a status-only change to our Gateway.
        let gw_echo = format!("{GATEWAY}status: {{conditions: []}}\n");
        st.update(Update::Apply(
            Kind::Gateway,
            Ok(object(Kind::Gateway, &gw_echo)),
        ));
        assert!(
            !st.dirty.snapshot.any() && st.dirty.status,
            "{:?}",
            st.dirty
        );
        // A delete recompiles.
        st.update(Update::Delete(
            Kind::AuthorizationPolicy,
            ObjectKey::new("demo", "deny-all"),
        ));
        assert!(st.dirty.snapshot.policies && st.dirty.status);
    }

    #[test]
    fn an_endpoint_or_pod_change_touches_destinations_only_and_reuses_the_policies() {
        let (mut st, mut rx) = synced(vec![
            (Kind::Gateway, GATEWAY),
            (Kind::AuthorizationPolicy, POLICY),
        ]);
        let before = st.cfg.handle.load();
        rx.mark_unchanged();
        st.update(Update::Apply(
            Kind::EndpointSlice,
            Ok(object(
                Kind::EndpointSlice,
                "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: httpbin-abc, namespace: demo, labels: {kubernetes.io/service-name: httpbin}}
addressType: IPv4
endpoints: []
",
            )),
        ));
        let d = &st.dirty;
        assert!(!d.snapshot.policies && !d.snapshot.authn && !d.status);
        assert!(
            d.snapshot
                .destinations
                .services
                .contains(&ServiceRef::Service(ObjectKey::new("demo", "httpbin")))
        );
        st.update(Update::Apply(
            Kind::Pod,
            Ok(object(
                Kind::Pod,
                "apiVersion: v1
kind: Pod
metadata: {name: httpbin-1, namespace: demo}
status: {podIP: 10.0.0.9}
",
            )),
        ));
        assert!(
            st.dirty
                .snapshot
                .destinations
                .pods
                .contains(&ObjectKey::new("demo", "httpbin-1"))
        );
        assert!(!st.dirty.status);
        st.publish(Instant::now());
        let after = st.cfg.handle.load();
        assert!(after.version > before.version);
        assert!(
            Arc::ptr_eq(&before.authorizer, &after.authorizer),
            "policies recompiled for an endpoint change"
        );
        assert!(
            !rx.has_changed().unwrap(),
            "status pass for a change status does not read"
        );
    }

    /// istiod's rule: only status.addresses makes a Gateway a waypoint, so gaining (or losing)
    /// them rebuilds what the waypoint serves; a status echo keeping them does not.
    #[test]
    fn status_addresses_decide_whether_our_gateway_serves() {
        let (mut st, _rx) = synced(vec![(Kind::Gateway, GATEWAY)]);
        assert!(
            st.cfg.handle.load().findings.not_a_waypoint.is_some(),
            "no status.addresses: not a waypoint"
        );
        let with_addresses =
            format!("{GATEWAY}status: {{addresses: [{{type: IPAddress, value: 10.96.0.2}}]}}\n");
        st.update(Update::Apply(
            Kind::Gateway,
            Ok(object(Kind::Gateway, &with_addresses)),
        ));
        assert!(st.dirty.snapshot.destinations.everything);
        st.publish(Instant::now());
        assert!(st.cfg.handle.load().findings.not_a_waypoint.is_none());
        let echo = format!(
            "{GATEWAY}status: {{addresses: [{{type: IPAddress, value: 10.96.0.2}}], conditions: []}}\n"
        );
        st.update(Update::Apply(
            Kind::Gateway,
            Ok(object(Kind::Gateway, &echo)),
        ));
        assert!(!st.dirty.snapshot.any(), "{:?}", st.dirty);
        // A GatewayClass carries istio.io/waypoint-for: what is served may change.
        st.update(Update::Apply(
            Kind::GatewayClass,
            Ok(object(
                Kind::GatewayClass,
                "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: istio-waypoint, labels: {istio.io/waypoint-for: all}}\nspec: {controllerName: istio.io/mesh-controller}\n",
            )),
        ));
        assert!(st.dirty.snapshot.destinations.everything);
    }

    #[test]
    fn a_policy_the_webhook_would_refuse_is_applied_counted_once_and_reported() {
        let (mut st, rx) = synced(vec![(Kind::Gateway, GATEWAY)]);
        // istiod ignores `provider` on a DENY: a plain DENY, which denies everything here.
        let invalid = POLICY.replace("action: DENY", "action: DENY\n  provider: {name: x}");
        let key = ObjectKey::new("demo", "deny-all");
        st.update(Update::Apply(
            Kind::AuthorizationPolicy,
            Ok(object(Kind::AuthorizationPolicy, &invalid)),
        ));
        assert!(st.invalid.is_empty(), "not kept out: {:?}", st.invalid);
        assert!(
            st.store
                .lock()
                .unwrap()
                .contains(Kind::AuthorizationPolicy, &key)
        );
        assert!(st.dirty.status && st.dirty.snapshot.policies);
        assert_eq!(st.cfg.metrics.kube_invalid_objects.get(), 1);
        st.publish(Instant::now());
        assert_eq!(st.cfg.handle.load().authorizer.policies().len(), 1);
        assert!(rx.borrow().invalid.is_empty());
        // The status the writer computes from the store names the field and says what is
        // enforced.
        let store = st.store.lock().unwrap();
        let ap = &store.authorization_policies[&key].object;
        let c = status::authorization_policy(&store, ap, "istio-system")
            .condition
            .unwrap();
        assert_eq!((c.status, c.reason), (false, status::Reason::Invalid));
        assert!(c.message.contains("spec.provider"), "{}", c.message);
        assert!(
            c.message.contains("enforced as istiod builds it"),
            "{}",
            c.message
        );
        drop(store);
        // Our own status write comes back: not counted again, nothing recompiled.
        let echo = format!("{invalid}status: {{conditions: []}}\n");
        st.update(Update::Apply(
            Kind::AuthorizationPolicy,
            Ok(object(Kind::AuthorizationPolicy, &echo)),
        ));
        assert!(!st.dirty.snapshot.policies);
        assert_eq!(st.cfg.metrics.kube_invalid_objects.get(), 1);
        // A relist of the same object does not count it again either.
        st.update(Update::Relist(
            Kind::AuthorizationPolicy,
            vec![Ok(object(Kind::AuthorizationPolicy, &invalid))],
        ));
        assert_eq!(st.cfg.metrics.kube_invalid_objects.get(), 1);
    }

    #[test]
    fn an_unknown_action_is_kept_out_and_the_previous_version_stays() {
        let (mut st, rx) = synced(vec![
            (Kind::Gateway, GATEWAY),
            (Kind::AuthorizationPolicy, POLICY),
        ]);
        let key = ObjectKey::new("demo", "deny-all");
        let unknown = POLICY.replace("action: DENY", "action: REJECT");
        st.update(Update::Apply(
            Kind::AuthorizationPolicy,
            Ok(object(Kind::AuthorizationPolicy, &unknown)),
        ));
        let inv = &st.invalid[&(Kind::AuthorizationPolicy, key.clone())];
        assert!(inv.error.field.contains("spec.action"), "{:?}", inv.error);
        assert_eq!(st.cfg.metrics.kube_invalid_objects.get(), 1);
        let store = st.store.lock().unwrap();
        let kept = &store.authorization_policies[&key].object;
        assert_eq!(kept.spec.action.as_deref(), Some("DENY"));
        drop(store);
        assert!(st.dirty.status && !st.dirty.snapshot.policies);
        st.publish(Instant::now());
        assert!(
            rx.borrow()
                .invalid
                .contains_key(&(Kind::AuthorizationPolicy, key))
        );
    }

    #[test]
    fn a_dry_run_annotation_change_recompiles() {
        let (mut st, _rx) = synced(vec![
            (Kind::Gateway, GATEWAY),
            (Kind::AuthorizationPolicy, POLICY),
        ]);
        let shadow = POLICY.replace(
            "generation: 1}",
            "generation: 1, annotations: {istio.io/dry-run: \"true\"}}",
        );
        st.update(Update::Apply(
            Kind::AuthorizationPolicy,
            Ok(object(Kind::AuthorizationPolicy, &shadow)),
        ));
        assert!(st.dirty.snapshot.policies, "{:?}", st.dirty);
        st.publish(Instant::now());
        assert!(st.cfg.handle.load().authorizer.policies()[0].dry_run);
    }
}
