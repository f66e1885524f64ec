//! One kube-runtime watcher per kind, turned into [`Update`]s for the sync thread.
//!
//! Watchers list, then watch from the list's resourceVersion; on a 410 (history compacted) or
//! any error they back off and relist. A relist is delivered as one [`Update::Relist`] holding
//! the complete set, so objects deleted while the watch was down disappear too.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use futures::StreamExt;
use gateway_api::apis::standard::gatewayclasses::GatewayClass;
use gateway_api::apis::standard::gateways::Gateway;
use gateway_api_bindings::pod::PodInfo;
use gateway_api_bindings::{Kind, LoadError, Object, ObjectKey, Origin, Store};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::mesh_config::MeshConfig;
use crate::metrics::Metrics;

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

/// Starts a watcher for every kind, plus the mesh ConfigMap.
pub fn spawn_all(
    client: &Client,
    mesh_config: &ObjectKey,
    tx: &Sender<Update>,
    metrics: &Arc<Metrics>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let c = client.clone();
    let m = || metrics.clone();
    let mut tasks = vec![
        tokio::spawn(typed::<Gateway>(
            Api::all(c.clone()),
            Kind::Gateway,
            tx.clone(),
            m(),
            |o| Object::Gateway(strip(o)),
        )),
        tokio::spawn(typed::<GatewayClass>(
            Api::all(c.clone()),
            Kind::GatewayClass,
            tx.clone(),
            m(),
            |o| Object::GatewayClass(strip(o)),
        )),
        tokio::spawn(typed::<Namespace>(
            Api::all(c.clone()),
            Kind::Namespace,
            tx.clone(),
            m(),
            |o| Object::Namespace(strip(o)),
        )),
        tokio::spawn(typed::<Service>(
            Api::all(c.clone()),
            Kind::Service,
            tx.clone(),
            m(),
            |o| Object::Service(strip(o)),
        )),
        tokio::spawn(typed::<EndpointSlice>(
            Api::all(c.clone()),
            Kind::EndpointSlice,
            tx.clone(),
            m(),
            |o| Object::EndpointSlice(strip(o)),
        )),
        tokio::spawn(typed::<Pod>(
            Api::all(c.clone()),
            Kind::Pod,
            tx.clone(),
            m(),
            |o| Object::Pod(PodInfo::from(o)),
        )),
    ];
    for kind in [
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
    ] {
        tasks.push(tokio::spawn(dynamic(
            c.clone(),
            kind,
            tx.clone(),
            metrics.clone(),
        )));
    }
    tasks.push(tokio::spawn(mesh_config_watch(
        c,
        mesh_config.clone(),
        tx.clone(),
        metrics.clone(),
    )));
    tasks
}

/// The plural and version the waypoint watches for a custom kind.
fn api_resource(kind: Kind) -> ApiResource {
    let (group, k) = kind.group_kind();
    let plural = format!("{}s", k.to_ascii_lowercase());
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", k), &plural)
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

async fn typed<K>(
    api: Api<K>,
    kind: Kind,
    tx: Sender<Update>,
    metrics: Arc<Metrics>,
    convert: fn(K) -> Object,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    run(
        api,
        watcher::Config::default(),
        kind,
        tx,
        metrics,
        move |o| Ok(convert(o)),
    )
    .await
}

async fn dynamic(client: Client, kind: Kind, tx: Sender<Update>, metrics: Arc<Metrics>) {
    let ar = api_resource(kind);
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
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
    run(api, watcher::Config::default(), kind, tx, metrics, convert).await
}

async fn run<K, F>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    tx: Sender<Update>,
    metrics: Arc<Metrics>,
    convert: F,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: Fn(K) -> Parsed,
{
    let mut listed: Vec<Parsed> = Vec::new();
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    while let Some(event) = stream.next().await {
        let update = match event {
            Ok(Event::Init) => {
                listed.clear();
                continue;
            }
            Ok(Event::InitApply(o)) => {
                listed.push(convert(o));
                continue;
            }
            Ok(Event::InitDone) => {
                tracing::debug!(%kind, objects = listed.len(), "listed");
                Update::Relist(kind, std::mem::take(&mut listed))
            }
            Ok(Event::Apply(o)) => Update::Apply(kind, convert(o)),
            Ok(Event::Delete(o)) => Update::Delete(kind, parsed_key(&convert(o))),
            Err(e) => {
                metrics.kube_watch_errors.inc();
                tracing::warn!(%kind, error = %e, "watch failed; the last snapshot keeps serving, retrying with backoff");
                continue;
            }
        };
        metrics.kube_events.inc();
        if tx.send(update).is_err() {
            return; // the sync thread is gone: shutting down
        }
    }
}

async fn mesh_config_watch(
    client: Client,
    key: ObjectKey,
    tx: Sender<Update>,
    metrics: Arc<Metrics>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &key.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
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
    while let Some(event) = stream.next().await {
        let updates = match event {
            Ok(Event::Init) => {
                listed = None;
                continue;
            }
            Ok(Event::InitApply(cm)) => {
                listed = parse(&cm);
                continue;
            }
            Ok(Event::InitDone) => {
                vec![Update::MeshConfig(listed.take()), Update::MeshConfigSynced]
            }
            Ok(Event::Apply(cm)) => vec![Update::MeshConfig(parse(&cm))],
            Ok(Event::Delete(_)) => vec![Update::MeshConfig(None)],
            Err(e) => {
                metrics.kube_watch_errors.inc();
                tracing::warn!(configmap = %key, error = %e, "mesh config watch failed; retrying with backoff");
                continue;
            }
        };
        for u in updates {
            if tx.send(u).is_err() {
                return;
            }
        }
    }
}
