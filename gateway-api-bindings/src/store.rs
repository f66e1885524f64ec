//! A pure index of the Kubernetes objects the waypoint reads, fed by files (here) or by watchers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use gateway_api::apis::standard::gatewayclasses::GatewayClass;
use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use serde::de::DeserializeOwned;

use crate::istio::{AuthorizationPolicy, RequestAuthentication, ServiceEntry, WorkloadEntry};
use crate::mesh::SERVICE_NAME_LABEL;
use crate::pod::PodInfo;

/// `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where an object came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub file: Option<PathBuf>,
    /// Zero-based YAML document index within the file.
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => write!(f, "{} (document {})", p.display(), self.document + 1),
            None => f.write_str("<api server>"),
        }
    }
}

/// An object with its origin.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    pub object: T,
    pub origin: Origin,
}

/// One object of a kind the waypoint reads.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    Gateway(Gateway),
    GatewayClass(GatewayClass),
    Service(Service),
    Namespace(Namespace),
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    AuthorizationPolicy(AuthorizationPolicy),
    RequestAuthentication(RequestAuthentication),
    EndpointSlice(EndpointSlice),
    /// Reduced on arrival: see [`crate::pod`].
    Pod(PodInfo),
}

/// The kinds the waypoint reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Gateway,
    GatewayClass,
    Service,
    Namespace,
    ServiceEntry,
    WorkloadEntry,
    AuthorizationPolicy,
    RequestAuthentication,
    EndpointSlice,
    Pod,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Gateway,
        Kind::GatewayClass,
        Kind::Service,
        Kind::Namespace,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::EndpointSlice,
        Kind::Pod,
    ];

    /// `(group, kind)` as in `apiVersion`/`kind`.
    pub fn group_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Gateway => ("gateway.networking.k8s.io", "Gateway"),
            Kind::GatewayClass => ("gateway.networking.k8s.io", "GatewayClass"),
            Kind::Service => ("", "Service"),
            Kind::Namespace => ("", "Namespace"),
            Kind::ServiceEntry => ("networking.istio.io", "ServiceEntry"),
            Kind::WorkloadEntry => ("networking.istio.io", "WorkloadEntry"),
            Kind::AuthorizationPolicy => ("security.istio.io", "AuthorizationPolicy"),
            Kind::RequestAuthentication => ("security.istio.io", "RequestAuthentication"),
            Kind::EndpointSlice => ("discovery.k8s.io", "EndpointSlice"),
            Kind::Pod => ("", "Pod"),
        }
    }

    fn of(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group_kind() == (group, kind))
    }

    /// Cluster-scoped kinds are keyed by name alone (namespace `""`).
    pub fn cluster_scoped(self) -> bool {
        matches!(self, Kind::GatewayClass | Kind::Namespace)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.group_kind().1)
    }
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Gateway(_) => Kind::Gateway,
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::Service(_) => Kind::Service,
            Object::Namespace(_) => Kind::Namespace,
            Object::ServiceEntry(_) => Kind::ServiceEntry,
            Object::WorkloadEntry(_) => Kind::WorkloadEntry,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::RequestAuthentication(_) => Kind::RequestAuthentication,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Pod(_) => Kind::Pod,
        }
    }

    /// The key it is stored under (namespace `""` for cluster-scoped kinds).
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::GatewayClass(o) => ObjectKey::new("", o.name_any()),
            Object::Namespace(o) => ObjectKey::new("", o.name_any()),
            Object::Gateway(o) => key_of(o),
            Object::Service(o) => key_of(o),
            Object::ServiceEntry(o) => key_of(o),
            Object::WorkloadEntry(o) => key_of(o),
            Object::AuthorizationPolicy(o) => key_of(o),
            Object::RequestAuthentication(o) => key_of(o),
            Object::EndpointSlice(o) => key_of(o),
            Object::Pod(o) => o.key.clone(),
        }
    }
}

/// A document that could not be turned into an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {object}{field}: {message}")]
pub struct LoadError {
    pub origin: Origin,
    /// `Kind namespace/name`, or `document` when it could not be read that far.
    pub object: String,
    /// ` field spec.rules[0]...` when known.
    pub field: String,
    pub message: String,
}

/// Everything known, keyed for lookup. Objects of other kinds are skipped by the loader.
#[derive(Debug, Default, Clone)]
pub struct Store {
    pub gateways: BTreeMap<ObjectKey, Sourced<Gateway>>,
    pub gateway_classes: BTreeMap<String, Sourced<GatewayClass>>,
    pub services: BTreeMap<ObjectKey, Sourced<Service>>,
    pub namespaces: BTreeMap<String, Sourced<Namespace>>,
    pub service_entries: BTreeMap<ObjectKey, Sourced<ServiceEntry>>,
    pub workload_entries: BTreeMap<ObjectKey, Sourced<WorkloadEntry>>,
    pub authorization_policies: BTreeMap<ObjectKey, Sourced<AuthorizationPolicy>>,
    pub request_authentications: BTreeMap<ObjectKey, Sourced<RequestAuthentication>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Sourced<EndpointSlice>>,
    pub pods: BTreeMap<ObjectKey, Sourced<PodInfo>>,
    /// Service -> its EndpointSlices (by the `kubernetes.io/service-name` label).
    pub slices_by_service: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Pod IP -> pod.
    pub pods_by_ip: HashMap<IpAddr, ObjectKey>,
}

fn key_of<K: kube::Resource>(o: &K) -> ObjectKey {
    ObjectKey::new(
        o.namespace().unwrap_or_else(|| "default".to_owned()),
        o.name_any(),
    )
}

impl Store {
    /// Inserts or replaces an object.
    pub fn apply(&mut self, object: Object, origin: Origin) {
        let key = object.key();
        macro_rules! put {
            ($map:ident, $k:expr, $o:expr) => {{
                self.$map.insert($k, Sourced { object: $o, origin });
            }};
        }
        match object {
            Object::Gateway(o) => put!(gateways, key, o),
            Object::GatewayClass(o) => put!(gateway_classes, key.name, o),
            Object::Service(o) => put!(services, key, o),
            Object::Namespace(o) => put!(namespaces, key.name, o),
            Object::ServiceEntry(o) => put!(service_entries, key, o),
            Object::WorkloadEntry(o) => put!(workload_entries, key, o),
            Object::AuthorizationPolicy(o) => put!(authorization_policies, key, o),
            Object::RequestAuthentication(o) => put!(request_authentications, key, o),
            Object::EndpointSlice(o) => {
                self.unindex_slice(&key);
                if let Some(svc) = slice_service(&o) {
                    self.slices_by_service
                        .entry(ObjectKey::new(&key.namespace, svc))
                        .or_default()
                        .insert(key.clone());
                }
                put!(endpoint_slices, key, o)
            }
            Object::Pod(o) => {
                self.unindex_pod(&key);
                for ip in &o.ips {
                    self.pods_by_ip.insert(*ip, key.clone());
                }
                put!(pods, key, o)
            }
        }
    }

    /// Removes an object; returns whether it was there.
    pub fn remove(&mut self, kind: Kind, key: &ObjectKey) -> bool {
        match kind {
            Kind::Gateway => self.gateways.remove(key).is_some(),
            Kind::GatewayClass => self.gateway_classes.remove(&key.name).is_some(),
            Kind::Service => self.services.remove(key).is_some(),
            Kind::Namespace => self.namespaces.remove(&key.name).is_some(),
            Kind::ServiceEntry => self.service_entries.remove(key).is_some(),
            Kind::WorkloadEntry => self.workload_entries.remove(key).is_some(),
            Kind::AuthorizationPolicy => self.authorization_policies.remove(key).is_some(),
            Kind::RequestAuthentication => self.request_authentications.remove(key).is_some(),
            Kind::EndpointSlice => {
                self.unindex_slice(key);
                self.endpoint_slices.remove(key).is_some()
            }
            Kind::Pod => {
                self.unindex_pod(key);
                self.pods.remove(key).is_some()
            }
        }
    }

    pub fn contains(&self, kind: Kind, key: &ObjectKey) -> bool {
        match kind {
            Kind::Gateway => self.gateways.contains_key(key),
            Kind::GatewayClass => self.gateway_classes.contains_key(&key.name),
            Kind::Service => self.services.contains_key(key),
            Kind::Namespace => self.namespaces.contains_key(&key.name),
            Kind::ServiceEntry => self.service_entries.contains_key(key),
            Kind::WorkloadEntry => self.workload_entries.contains_key(key),
            Kind::AuthorizationPolicy => self.authorization_policies.contains_key(key),
            Kind::RequestAuthentication => self.request_authentications.contains_key(key),
            Kind::EndpointSlice => self.endpoint_slices.contains_key(key),
            Kind::Pod => self.pods.contains_key(key),
        }
    }

    /// Every key of one kind, for replacing a kind wholesale after a relist.
    pub fn keys(&self, kind: Kind) -> Vec<ObjectKey> {
        fn k<T>(m: &BTreeMap<ObjectKey, T>) -> Vec<ObjectKey> {
            m.keys().cloned().collect()
        }
        fn named<T>(m: &BTreeMap<String, T>) -> Vec<ObjectKey> {
            m.keys().map(|n| ObjectKey::new("", n.clone())).collect()
        }
        match kind {
            Kind::Gateway => k(&self.gateways),
            Kind::GatewayClass => named(&self.gateway_classes),
            Kind::Service => k(&self.services),
            Kind::Namespace => named(&self.namespaces),
            Kind::ServiceEntry => k(&self.service_entries),
            Kind::WorkloadEntry => k(&self.workload_entries),
            Kind::AuthorizationPolicy => k(&self.authorization_policies),
            Kind::RequestAuthentication => k(&self.request_authentications),
            Kind::EndpointSlice => k(&self.endpoint_slices),
            Kind::Pod => k(&self.pods),
        }
    }

    fn unindex_slice(&mut self, key: &ObjectKey) {
        let Some(old) = self.endpoint_slices.get(key) else {
            return;
        };
        if let Some(svc) = slice_service(&old.object) {
            let skey = ObjectKey::new(&key.namespace, svc);
            if let Some(set) = self.slices_by_service.get_mut(&skey) {
                set.remove(key);
                if set.is_empty() {
                    self.slices_by_service.remove(&skey);
                }
            }
        }
    }

    fn unindex_pod(&mut self, key: &ObjectKey) {
        let Some(old) = self.pods.get(key) else {
            return;
        };
        for ip in &old.object.ips {
            if self.pods_by_ip.get(ip) == Some(key) {
                self.pods_by_ip.remove(ip);
            }
        }
    }

    /// Reads one object known to be of `kind` (list items from the API server carry no type).
    pub fn parse_as(
        kind: Kind,
        value: serde_json::Value,
        origin: &Origin,
    ) -> Result<Object, LoadError> {
        let meta = |k: &str| {
            value
                .get("metadata")
                .and_then(|m| m.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let ident = format!(
            "{kind} {}/{}",
            meta("namespace").unwrap_or_default(),
            meta("name").unwrap_or_else(|| "<unnamed>".into())
        );
        Self::parse_kind(kind, value, origin, &ident)
    }

    fn parse_kind<D>(
        kind: Kind,
        value: D,
        origin: &Origin,
        ident: &str,
    ) -> Result<Object, LoadError>
    where
        D: for<'de> serde::Deserializer<'de>,
    {
        Ok(match kind {
            Kind::Gateway => Object::Gateway(typed(value, origin, ident)?),
            Kind::GatewayClass => Object::GatewayClass(typed(value, origin, ident)?),
            Kind::Service => Object::Service(typed(value, origin, ident)?),
            Kind::Namespace => Object::Namespace(typed(value, origin, ident)?),
            Kind::ServiceEntry => Object::ServiceEntry(typed(value, origin, ident)?),
            Kind::WorkloadEntry => Object::WorkloadEntry(typed(value, origin, ident)?),
            Kind::AuthorizationPolicy => Object::AuthorizationPolicy(typed(value, origin, ident)?),
            Kind::RequestAuthentication => {
                Object::RequestAuthentication(typed(value, origin, ident)?)
            }
            Kind::EndpointSlice => Object::EndpointSlice(typed(value, origin, ident)?),
            Kind::Pod => Object::Pod(PodInfo::from(typed::<Pod, _>(value, origin, ident)?)),
        })
    }

    /// Loads a multi-document YAML file, or every `.yaml`/`.yml` file under a directory (sorted,
    /// recursively). Unreadable documents are returned as errors; the rest is loaded.
    pub fn load_path(&mut self, path: &Path) -> Result<Vec<LoadError>, std::io::Error> {
        let mut errors = Vec::new();
        for file in yaml_files(path)? {
            let text = std::fs::read_to_string(&file)?;
            errors.extend(self.load_str(&text, Some(&file)));
        }
        Ok(errors)
    }

    /// Loads multi-document YAML text.
    pub fn load_str(&mut self, text: &str, file: Option<&Path>) -> Vec<LoadError> {
        let mut errors = Vec::new();
        for (document, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let origin = Origin {
                file: file.map(Path::to_path_buf),
                document,
            };
            let value = match <serde_yaml::Value as serde::Deserialize>::deserialize(de) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    errors.push(LoadError {
                        origin,
                        object: "document".into(),
                        field: String::new(),
                        message: format!("not valid YAML: {e}"),
                    });
                    continue;
                }
            };
            self.load_value(value, &origin, &mut errors);
        }
        errors
    }

    fn load_value(
        &mut self,
        value: serde_yaml::Value,
        origin: &Origin,
        errors: &mut Vec<LoadError>,
    ) {
        let text = |k: &str| {
            value
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        let (api_version, kind) = (text("apiVersion"), text("kind"));
        let meta = |k: &str| {
            value
                .get("metadata")
                .and_then(|m| m.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let ident = format!(
            "{kind} {}/{}",
            meta("namespace").unwrap_or_else(|| "default".into()),
            meta("name").unwrap_or_else(|| "<unnamed>".into())
        );
        if kind == "List" {
            if let Some(serde_yaml::Value::Sequence(items)) = value.get("items").cloned() {
                for item in items {
                    self.load_value(item, origin, errors);
                }
            }
            return;
        }
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let parsed = Kind::of(group, &kind).map(|k| Self::parse_kind(k, value, origin, &ident));
        match parsed {
            Some(Ok(object)) => self.apply(object, origin.clone()),
            Some(Err(e)) => errors.push(e),
            None => {
                tracing::debug!(%origin, %ident, "skipping an object of a kind the waypoint does not read")
            }
        }
    }
}

fn typed<'de, T: DeserializeOwned, D: serde::Deserializer<'de>>(
    value: D,
    origin: &Origin,
    ident: &str,
) -> Result<T, LoadError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        LoadError {
            origin: origin.clone(),
            object: ident.to_owned(),
            field: if path == "." {
                String::new()
            } else {
                format!(" field {path}")
            },
            message: e.into_inner().to_string(),
        }
    })
}

fn slice_service(slice: &EndpointSlice) -> Option<&String> {
    slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    if !path.is_dir() {
        // Surface a missing file as an error rather than an empty config.
        std::fs::metadata(path)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_named() {
        let mut s = Store::default();
        let errs = s.load_str(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\n\
             spec:\n  rules:\n  - from:\n    - source: {notPrincipal: [x]}\n",
            None,
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].object, "AuthorizationPolicy foo/p");
        assert_eq!(
            errs[0].field,
            " field spec.rules[0].from[0].source.notPrincipal"
        );
        assert!(
            errs[0].message.contains("notPrincipal"),
            "{}",
            errs[0].message
        );
        assert!(s.authorization_policies.is_empty());
    }

    #[test]
    fn loads_several_documents_and_kinds() {
        let mut s = Store::default();
        let errs = s.load_str(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: foo}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n\
             apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {}\n",
            None,
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert!(s.services.contains_key(&ObjectKey::new("foo", "a")));
        assert!(
            s.authorization_policies
                .contains_key(&ObjectKey::new("default", "p"))
        );
    }
}
