//! One kube-runtime watcher per kind, turned into [`Update`]s for the sync thread.
//!
//! Each watcher lists (in pages of 500, following `continue`), then watches from the list's
//! resourceVersion; after a `410 Gone` or any error it waits ([`Backoff`]: 0.8 s doubling to
//! 30 s) and relists. A relist is delivered as one [`Update::Relist`] holding the complete set,
//! so objects deleted while the watch was down disappear too, and none is applied twice.
//!
//! Resource names come from the bindings' table ([`Kind::api`]). A kind defined by a CRD is
//! first looked up in the API server's discovery: when its CRD is not installed, the kind is
//! empty (logged once, looked up again every [`WatchContext::crd_recheck`]), so a cluster
//! without ServiceEntries still syncs. When the CRD's group is served only in other versions
//! than the one the waypoint reads, the kind is not treated as empty (policies may exist that
//! it cannot read): readiness waits and the log says why.
//!
//! Every failure is logged with the kind, the URL and the HTTP status, a 403 with the RBAC rule
//! to add, and says what the data path is serving meanwhile: nothing before the first full sync,
//! the last snapshot after it.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use futures::StreamExt;
use gateway_api::apis::standard::gatewayclasses::GatewayClass;
use gateway_api::apis::standard::gateways::Gateway;
use gateway_api_bindings::api::KubeResource;
use gateway_api_bindings::pod::PodInfo;
use gateway_api_bindings::{Kind, LoadError, Object, ObjectKey, Origin, Store};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::client::{self, Connection};
use super::mesh_config::MeshConfig;
use super::own_pods::OwnPodsTracker;
use super::retry::Backoff;
use crate::metrics::Metrics;
use crate::state::StateHandle;

/// An object that could not be read, kept for its status.
#[derive(Debug, Clone)]
pub struct Invalid {
    pub key: ObjectKey,
    pub generation: Option<i64>,
    pub error: LoadError,
    /// The object, when it could be read but failed validation (its targetRefs still say
    /// which waypoint should report on it).
    pub object: Option<Box<Object>>,
}

/// An object as read: usable, or invalid.
pub type Parsed = Result<Object, Box<Invalid>>;

fn parsed_key(p: &Parsed) -> ObjectKey {
    match p {
        Ok(o) => o.key(),
        Err(i) => i.key.clone(),
    }
}

/// What the watchers tell the sync thread.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // short-lived messages; boxing each object costs more
pub enum Update {
    Apply(Kind, Parsed),
    Delete(Kind, ObjectKey),
    /// The complete set of a kind after a (re)list.
    Relist(Kind, Vec<Parsed>),
    /// The mesh ConfigMap; `None` when it does not exist or has no `mesh` key.
    MeshConfig(Option<MeshConfig>),
    /// The mesh ConfigMap watcher has (re)listed.
    MeshConfigSynced,
}

/// What every watcher shares.
#[derive(Debug, Clone)]
pub(super) struct WatchContext {
    pub(super) conn: Connection,
    pub(super) tx: Sender<Update>,
    pub(super) metrics: Arc<Metrics>,
    /// Whether a first snapshot is out, for telling the truth about what is served.
    pub(super) state: Arc<StateHandle>,
    /// How often to look again for a CRD that is not installed.
    pub(super) crd_recheck: Duration,
}

/// Starts a watcher for every kind, plus the mesh ConfigMap. `own_pods` follows the pod watch
/// for the Gateway's pods' readiness (when status is written).
pub(super) fn spawn_all(
    ctx: &WatchContext,
    mesh_config: &ObjectKey,
    own_pods: Option<OwnPodsTracker>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let c = &ctx.conn.client;
    let mut tasks = vec![
        tokio::spawn(typed::<Gateway>(
            ctx.clone(),
            Kind::Gateway,
            Api::all(c.clone()),
            |o| Object::Gateway(strip(o)),
        )),
        tokio::spawn(typed::<GatewayClass>(
            ctx.clone(),
            Kind::GatewayClass,
            Api::all(c.clone()),
            |o| Object::GatewayClass(strip(o)),
        )),
        tokio::spawn(typed::<Namespace>(
            ctx.clone(),
            Kind::Namespace,
            Api::all(c.clone()),
            |o| Object::Namespace(strip(o)),
        )),
        tokio::spawn(typed::<Service>(
            ctx.clone(),
            Kind::Service,
            Api::all(c.clone()),
            |o| Object::Service(strip(o)),
        )),
        tokio::spawn(typed::<EndpointSlice>(
            ctx.clone(),
            Kind::EndpointSlice,
            Api::all(c.clone()),
            |o| Object::EndpointSlice(strip(o)),
        )),
        tokio::spawn(pods(ctx.clone(), own_pods)),
    ];
    for kind in [
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
    ] {
        tasks.push(tokio::spawn(dynamic(ctx.clone(), kind)));
    }
    tasks.push(tokio::spawn(mesh_config_watch(
        ctx.clone(),
        mesh_config.clone(),
    )));
    tasks
}

/// Drops what the waypoint never reads but the API server always sends: managed fields and the
/// last-applied annotation can be most of an object.
fn strip<K: Resource>(mut o: K) -> K {
    let m = o.meta_mut();
    m.managed_fields = None;
    if let Some(a) = &mut m.annotations {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    o
}

/// What one watcher watches, for its requests and its log lines.
#[derive(Debug)]
struct Watched {
    /// The kind's name, or the ConfigMap's.
    what: String,
    resource: &'static KubeResource,
    /// The list URL (with its selector, if any).
    url: String,
    /// The namespace watched, when not all.
    namespace: Option<String>,
    /// The verbs an RBAC rule must grant.
    verbs: &'static [&'static str],
}

impl Watched {
    fn kind(ctx: &WatchContext, kind: Kind) -> Watched {
        let resource = kind.api();
        Watched {
            what: kind.to_string(),
            resource,
            url: ctx.conn.url(&resource.collection_path(None)),
            namespace: None,
            verbs: &["list", "watch"],
        }
    }
}

/// Why a watcher stopped.
enum Ended {
    /// The sync thread is gone: shutting down.
    Closed,
    /// The list answered 404: the CRD may have been removed; look it up again.
    NotFound,
}

async fn typed<K>(ctx: WatchContext, kind: Kind, api: Api<K>, convert: fn(K) -> Object)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    follow_kind(ctx, kind, api, move |o| Ok(convert(o)), |_: &Event<K>| {}).await
}

/// Pods, cut down on arrival to [`PodInfo`]; the Gateway's own pods' readiness is read on the way.
async fn pods(ctx: WatchContext, mut own: Option<OwnPodsTracker>) {
    let api: Api<Pod> = Api::all(ctx.conn.client.clone());
    let tap = move |e: &Event<Pod>| {
        if let Some(t) = &mut own {
            match e {
                Event::Init => t.init(),
                Event::InitApply(p) => t.init_apply(p),
                Event::InitDone => t.init_done(),
                Event::Apply(p) => t.apply(p),
                Event::Delete(p) => t.delete(p),
            }
        }
    };
    follow_kind(
        ctx,
        Kind::Pod,
        api,
        |o| Ok(Object::Pod(PodInfo::from(o))),
        tap,
    )
    .await
}

async fn dynamic(ctx: WatchContext, kind: Kind) {
    let api: Api<DynamicObject> =
        Api::all_with(ctx.conn.client.clone(), &client::api_resource(kind.api()));
    let convert = move |o: DynamicObject| -> Parsed {
        let key = ObjectKey::new(o.namespace().unwrap_or_default(), o.name_any());
        let generation = o.metadata.generation;
        let origin = Origin::default();
        let invalid = |error| {
            Box::new(Invalid {
                key: key.clone(),
                generation,
                error,
                object: None,
            })
        };
        let value = serde_json::to_value(strip(o)).map_err(|e| {
            invalid(LoadError {
                origin: origin.clone(),
                object: format!("{kind} {key}"),
                field: String::new(),
                message: e.to_string(),
            })
        })?;
        Store::parse_as(kind, value, &origin).map_err(invalid)
    };
    follow_kind(ctx, kind, api, convert, |_: &Event<DynamicObject>| {}).await
}

/// Whether the API server serves a CRD-defined resource, from its discovery documents.
#[derive(Debug, PartialEq)]
enum Discovery {
    Served,
    /// The CRD is not installed: the kind has no objects.
    NotInstalled,
    /// The group is served, but only in these versions: objects may exist that the waypoint
    /// cannot read.
    OtherVersions(Vec<String>),
}

async fn discover(conn: &Connection, r: &KubeResource) -> Result<Discovery, kube::Error> {
    match conn.client.list_api_group_resources(&r.api_version()).await {
        Ok(list) => Ok(if list.resources.iter().any(|x| x.name == r.plural) {
            Discovery::Served
        } else {
            Discovery::NotInstalled
        }),
        Err(e) if client::status_code(&e) == Some(404) => {
            let groups = conn.client.list_api_groups().await?;
            Ok(match groups.groups.iter().find(|g| g.name == r.group) {
                Some(g) => {
                    Discovery::OtherVersions(g.versions.iter().map(|v| v.version.clone()).collect())
                }
                None => Discovery::NotInstalled,
            })
        }
        Err(e) => Err(e),
    }
}

/// One kind, for as long as the sync thread listens: discovery first when a CRD defines it,
/// then the watcher; a 404 from the list sends it back to discovery.
async fn follow_kind<K, F, T>(ctx: WatchContext, kind: Kind, api: Api<K>, convert: F, mut tap: T)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: Fn(K) -> Parsed,
    T: FnMut(&Event<K>),
{
    let w = Watched::kind(&ctx, kind);
    let r = w.resource;
    let mut backoff = Backoff::default();
    // What was last reported about discovery, so each state is logged once.
    let mut reported: Option<Discovery> = None;
    loop {
        if r.crd {
            let discovery_url = ctx.conn.url(&r.group_version_path());
            let found = match discover(&ctx.conn, r).await {
                Ok(d) => d,
                Err(e) => {
                    let delay = backoff.failed();
                    report_failure(&ctx, &w, "discover", &discovery_url, &e, delay);
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            if found != Discovery::Served {
                if reported.as_ref() != Some(&found) {
                    report_discovery(&ctx, &w, &discovery_url, &found);
                    if found == Discovery::NotInstalled
                        && ctx.tx.send(Update::Relist(kind, Vec::new())).is_err()
                    {
                        return;
                    }
                    reported = Some(found);
                }
                tokio::time::sleep(ctx.crd_recheck).await;
                continue;
            }
            if reported.take().is_some() {
                tracing::info!(%kind, url = %discovery_url, "{} is served now; listing and watching it", r.qualified());
            }
        }
        let mut listed: Vec<Parsed> = Vec::new();
        let on_event = |e: Event<K>| -> Vec<Update> {
            tap(&e);
            match e {
                Event::Init => {
                    listed.clear();
                    vec![]
                }
                Event::InitApply(o) => {
                    listed.push(convert(o));
                    vec![]
                }
                Event::InitDone => {
                    tracing::debug!(%kind, objects = listed.len(), "listed");
                    vec![Update::Relist(kind, std::mem::take(&mut listed))]
                }
                Event::Apply(o) => vec![Update::Apply(kind, convert(o))],
                Event::Delete(o) => vec![Update::Delete(kind, parsed_key(&convert(o)))],
            }
        };
        match run(
            &ctx,
            &w,
            api.clone(),
            watcher::Config::default(),
            &mut backoff,
            on_event,
        )
        .await
        {
            Ended::Closed => return,
            Ended::NotFound => {
                // Look the CRD up again, but not in a tight loop should discovery disagree.
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }
}

/// Drives one watcher, handing its events to `on_event` and the updates it makes to the sync
/// thread, waiting out failures with `backoff`.
async fn run<K>(
    ctx: &WatchContext,
    w: &Watched,
    api: Api<K>,
    config: watcher::Config,
    backoff: &mut Backoff,
    mut on_event: impl FnMut(Event<K>) -> Vec<Update>,
) -> Ended
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    // No `default_backoff()`: kube-runtime's StreamBackoff resets on the `Init` the watcher
    // yields before every relist, so a failing list would be retried every second forever.
    let mut stream = std::pin::pin!(watcher::watcher(api, config));
    while let Some(event) = stream.next().await {
        let e = match event {
            Ok(e) => e,
            Err(e) => {
                ctx.metrics.kube_watch_errors.inc();
                // A CRD removed while watched: the list or the next watch 404s.
                if w.resource.crd
                    && let watcher::Error::InitialListFailed(le)
                    | watcher::Error::WatchStartFailed(le) = &e
                    && client::status_code(le) == Some(404)
                {
                    tracing::warn!(kind = %w.what, url = %w.url, code = 404, "{} is not served any more; looking its CRD up again", w.resource.qualified());
                    return Ended::NotFound;
                }
                let delay = backoff.failed();
                report_watch_error(ctx, w, &e, delay);
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        for update in on_event(e) {
            ctx.metrics.kube_events.inc();
            if ctx.tx.send(update).is_err() {
                return Ended::Closed;
            }
        }
    }
    Ended::Closed
}

/// What the data path serves while a watcher cannot see its kind.
fn served(ctx: &WatchContext) -> &'static str {
    if ctx.state.is_synced() {
        "the last snapshot keeps serving, without the changes since"
    } else {
        "nothing is served yet: readiness waits until every kind has been listed once"
    }
}

fn report_watch_error(ctx: &WatchContext, w: &Watched, e: &watcher::Error, delay: Duration) {
    let watch_url = format!(
        "{}{}watch=true",
        w.url,
        if w.url.contains('?') { '&' } else { '?' }
    );
    match e {
        watcher::Error::InitialListFailed(e) => report_failure(ctx, w, "list", &w.url, e, delay),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            report_failure(ctx, w, "watch", &watch_url, e, delay)
        }
        // History compacted past our resourceVersion: routine, the relist catches up.
        watcher::Error::WatchError(s) if s.code == 410 => {
            tracing::info!(kind = %w.what, url = %watch_url, code = 410, retry_in = ?delay, "watch expired (410 Gone): relisting; {}", served(ctx));
        }
        watcher::Error::WatchError(s) => {
            tracing::warn!(kind = %w.what, url = %watch_url, code = s.code, reason = %s.reason, error = %s.message, retry_in = ?delay, "watch ended with an error: relisting; {}", served(ctx));
        }
        watcher::Error::NoResourceVersion => {
            tracing::warn!(kind = %w.what, url = %w.url, retry_in = ?delay, "the API server sent an object without a resourceVersion: relisting; {}", served(ctx));
        }
    }
}

fn report_failure(
    ctx: &WatchContext,
    w: &Watched,
    verb: &str,
    url: &str,
    e: &kube::Error,
    delay: Duration,
) {
    let served = served(ctx);
    match (client::status_code(e), e) {
        (Some(403), kube::Error::Api(s)) => {
            let rule = client::missing_rule(w.resource, None, w.verbs, w.namespace.as_deref());
            tracing::warn!(
                kind = %w.what, verb, %url, code = 403, error = %s.message, retry_in = ?delay,
                "forbidden by RBAC: missing rule {rule}; {served}"
            );
        }
        (Some(code), kube::Error::Api(s)) => {
            tracing::warn!(
                kind = %w.what, verb, %url, code, reason = %s.reason, error = %s.message, retry_in = ?delay,
                "{verb} failed; {served}"
            );
        }
        _ => {
            tracing::warn!(
                kind = %w.what, verb, %url, error = %e, retry_in = ?delay,
                "{verb} failed: no answer from the API server; {served}"
            );
        }
    }
}

fn report_discovery(ctx: &WatchContext, w: &Watched, url: &str, found: &Discovery) {
    let r = w.resource;
    match found {
        Discovery::NotInstalled => tracing::warn!(
            kind = %w.what, %url, code = 404,
            "{} is not served (its CRD is not installed): the kind is empty until it appears; looking again every {:?}",
            r.qualified(), ctx.crd_recheck
        ),
        Discovery::OtherVersions(versions) => tracing::error!(
            kind = %w.what, %url, code = 404, served_versions = ?versions,
            "{} is served only in other versions than {}: objects may exist that this waypoint cannot read, so it stays not ready; {}",
            r.group, r.version, served(ctx)
        ),
        Discovery::Served => {}
    }
}

async fn mesh_config_watch(ctx: WatchContext, key: ObjectKey) {
    let r = gateway_api_bindings::api::config_map();
    let api: Api<ConfigMap> = Api::namespaced(ctx.conn.client.clone(), &key.namespace);
    let selector = format!("metadata.name={}", key.name);
    let w = Watched {
        what: format!("mesh ConfigMap {key}"),
        resource: r,
        url: ctx.conn.url(&format!(
            "{}?fieldSelector=metadata.name%3D{}",
            r.collection_path(Some(&key.namespace)),
            key.name
        )),
        namespace: Some(key.namespace.clone()),
        verbs: &["get", "list", "watch"],
    };
    let parse = |cm: &ConfigMap| -> Option<MeshConfig> {
        let text = cm.data.as_ref()?.get("mesh")?;
        match MeshConfig::parse(text) {
            Ok(mc) => Some(mc),
            Err(e) => {
                tracing::error!(configmap = %key, error = %e, "mesh config ignored; defaults and flags apply");
                None
            }
        }
    };
    let mut listed = None;
    let on_event = |e: Event<ConfigMap>| match e {
        Event::Init => {
            listed = None;
            vec![]
        }
        Event::InitApply(cm) => {
            listed = parse(&cm);
            vec![]
        }
        Event::InitDone => vec![Update::MeshConfig(listed.take()), Update::MeshConfigSynced],
        Event::Apply(cm) => vec![Update::MeshConfig(parse(&cm))],
        Event::Delete(_) => vec![Update::MeshConfig(None)],
    };
    let mut backoff = Backoff::default();
    let config = watcher::Config::default().fields(&selector);
    run(&ctx, &w, api, config, &mut backoff, on_event).await;
}
