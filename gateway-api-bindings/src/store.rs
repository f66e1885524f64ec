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

use crate::istio::{
    AuthorizationPolicy, PeerAuthentication, RequestAuthentication, ServiceEntry, WorkloadEntry,
};
use crate::key::{Kind, ObjectKey};
use crate::limits;
use crate::mesh_rules::MeshRules;
use crate::pod::PodInfo;
use crate::well_known::SERVICE_NAME_LABEL;
use crate::yaml;

/// Errors reported for one file; the rest are counted in one more error.
pub const MAX_ERRORS_PER_FILE: usize = 20;

/// Files read from one config directory.
pub const MAX_FILES: usize = 4096;

/// Longest file path echoed in an error.
const MAX_SHOWN_PATH: usize = 256;

/// Longest error message kept (decoding errors can quote values).
const MAX_MESSAGE: usize = 512;

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
            Some(p) => write!(
                f,
                "{} (document {})",
                limits::shown_max(&p.display().to_string(), MAX_SHOWN_PATH),
                self.document + 1
            ),
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
    PeerAuthentication(PeerAuthentication),
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
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
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
            Object::PeerAuthentication(o) => key_of(o),
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

/// An object of a kind the waypoint does not read (an HTTPRoute, a VirtualService, ...): the
/// loader skips it, and `authz check` names it so that nobody believes it is enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub origin: Origin,
    /// `apiVersion` and `kind` as written (made printable).
    pub api_version: String,
    pub kind: String,
    /// `namespace/name` (made printable).
    pub key: String,
}

/// Everything known, keyed for lookup. Objects of other kinds are skipped by the loader and
/// listed in [`Store::ignored`].
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
    /// Read by `waypoint analyze` only (see [`Kind::PeerAuthentication`]).
    pub peer_authentications: BTreeMap<ObjectKey, Sourced<PeerAuthentication>>,
    /// Service -> its EndpointSlices (by the `kubernetes.io/service-name` label).
    pub slices_by_service: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Pod IP -> pod.
    pub pods_by_ip: HashMap<IpAddr, ObjectKey>,
    /// Objects of kinds the waypoint does not read, as loaded from files.
    pub ignored: Vec<Ignored>,
    /// How membership is decided for these objects: set by the source (the Kubernetes source
    /// follows istiod's `status.addresses` rule; files default to a fallback) and from the mesh
    /// config.
    pub rules: MeshRules,
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
            Object::PeerAuthentication(o) => put!(peer_authentications, key, o),
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
            Kind::PeerAuthentication => self.peer_authentications.remove(key).is_some(),
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
            Kind::PeerAuthentication => self.peer_authentications.contains_key(key),
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
            Kind::PeerAuthentication => k(&self.peer_authentications),
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
    /// The limits of [`limits::check`] apply, as to files.
    pub fn parse_as(
        kind: Kind,
        value: serde_json::Value,
        origin: &Origin,
    ) -> Result<Object, LoadError> {
        let ident = ident(&kind.to_string(), &value, "");
        if let Some(v) = limits::check(kind, &value).into_iter().next() {
            return Err(violation_error(origin, &ident, v));
        }
        Self::parse_kind(kind, value, origin, &ident)
    }

    fn parse_kind(
        kind: Kind,
        value: serde_json::Value,
        origin: &Origin,
        ident: &str,
    ) -> Result<Object, LoadError> {
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
            Kind::Pod => Object::Pod(PodInfo::from(typed::<Pod>(value, origin, ident)?)),
            Kind::PeerAuthentication => Object::PeerAuthentication(typed(value, origin, ident)?),
        })
    }

    /// Loads a multi-document YAML file, or every `.yaml`/`.yml` file under a directory (see
    /// [`config_files`]). Documents that cannot be read are returned as errors (at most
    /// [`MAX_ERRORS_PER_FILE`] per file, plus a count); the rest is loaded. A file that cannot be
    /// read at all is one error naming it; only listing the directory fails the whole call.
    pub fn load_path(&mut self, path: &Path) -> Result<Vec<LoadError>, std::io::Error> {
        let mut errors = Vec::new();
        let mut seen = HashMap::new();
        for file in config_files(path)? {
            match read_bounded(&file) {
                Ok(text) => errors.extend(self.load_text(&text, Some(&file), &mut seen)),
                Err(message) => errors.push(LoadError {
                    origin: Origin {
                        file: Some(file.clone()),
                        document: 0,
                    },
                    object: "file".into(),
                    field: String::new(),
                    message,
                }),
            }
        }
        Ok(errors)
    }

    /// Loads multi-document YAML text (see [`crate::yaml`] for what is refused). The same object
    /// (kind, namespace, name) twice in the text is an error naming both places, and the second
    /// copy is not used; a later call replaces objects, as [`Store::apply`] does.
    pub fn load_str(&mut self, text: &str, file: Option<&Path>) -> Vec<LoadError> {
        self.load_text(text, file, &mut HashMap::new())
    }

    /// `seen`: where each object of this load (one text, or every file of a path) came from.
    fn load_text(&mut self, text: &str, file: Option<&Path>, seen: &mut Seen) -> Vec<LoadError> {
        let origin_of = |document| Origin {
            file: file.map(Path::to_path_buf),
            document,
        };
        let mut errors = Vec::new();
        if let Err(message) = yaml::check_size(text.len()) {
            errors.push(LoadError {
                origin: origin_of(0),
                object: "file".into(),
                field: String::new(),
                message,
            });
            return errors;
        }
        let (documents, syntax) = yaml::documents(text);
        for doc in documents {
            if doc.value.is_null() {
                continue;
            }
            self.load_value(doc.value, &origin_of(doc.index), seen, &mut errors);
        }
        if let Some(e) = syntax {
            errors.push(LoadError {
                origin: origin_of(e.document),
                object: "document".into(),
                field: String::new(),
                message: format!(
                    "not valid YAML: {}; the rest of the file is not read",
                    limits::shown_max(&e.to_string(), MAX_MESSAGE)
                ),
            });
        }
        if errors.len() > MAX_ERRORS_PER_FILE {
            let more = errors.len() - MAX_ERRORS_PER_FILE;
            errors.truncate(MAX_ERRORS_PER_FILE);
            errors.push(LoadError {
                origin: origin_of(0),
                object: "file".into(),
                field: String::new(),
                message: format!("and {more} more error(s) in this file"),
            });
        }
        errors
    }

    fn load_value(
        &mut self,
        value: serde_json::Value,
        origin: &Origin,
        seen: &mut Seen,
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
        if kind == "List" {
            if let Some(serde_json::Value::Array(items)) = value.get("items").cloned() {
                for item in items {
                    self.load_value(item, origin, seen, errors);
                }
            }
            return;
        }
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let Some(k) = Kind::of(group, &kind) else {
            let ident = ident("", &value, "default");
            tracing::debug!(%origin, kind = %limits::shown(&kind), object = %ident, "skipping an object of a kind the waypoint does not read");
            self.ignored.push(Ignored {
                origin: origin.clone(),
                api_version: limits::shown(&api_version).into_owned(),
                kind: limits::shown(&kind).into_owned(),
                key: ident.trim_start().to_owned(),
            });
            return;
        };
        let ident = ident(
            &kind,
            &value,
            if k.cluster_scoped() { "" } else { "default" },
        );
        let violations = limits::check(k, &value);
        if !violations.is_empty() {
            errors.extend(
                violations
                    .into_iter()
                    .map(|v| violation_error(origin, &ident, v)),
            );
            return;
        }
        match Self::parse_kind(k, value, origin, &ident) {
            Ok(object) => {
                if let Some(first) = seen.get(&(k, object.key())) {
                    errors.push(LoadError {
                        origin: origin.clone(),
                        object: ident,
                        field: String::new(),
                        message: format!(
                            "also defined at {first}; the same object in two places is refused, neither copy replaces the other"
                        ),
                    });
                } else {
                    seen.insert((k, object.key()), origin.clone());
                    self.apply(object, origin.clone());
                }
            }
            Err(e) => errors.push(e),
        }
    }
}

/// Where each object of one load came from.
type Seen = HashMap<(Kind, ObjectKey), Origin>;

/// `Kind namespace/name` for messages, printable and bounded whatever the object holds.
fn ident(kind: &str, value: &serde_json::Value, default_ns: &str) -> String {
    let meta = |k: &str| {
        value
            .get("metadata")
            .and_then(|m| m.get(k))
            .and_then(|v| v.as_str())
    };
    let ns = meta("namespace").unwrap_or(default_ns);
    let name = meta("name").unwrap_or("<unnamed>");
    let key = if ns.is_empty() {
        limits::shown(name).into_owned()
    } else {
        format!("{}/{}", limits::shown(ns), limits::shown(name))
    };
    format!("{} {key}", limits::shown(kind))
}

fn violation_error(origin: &Origin, ident: &str, v: limits::Violation) -> LoadError {
    LoadError {
        origin: origin.clone(),
        object: ident.to_owned(),
        field: if v.field.is_empty() {
            String::new()
        } else {
            format!(" field {}", v.field)
        },
        message: v.message,
    }
}

/// Reads a config file, refusing more than [`yaml::MAX_BYTES`] without reading further.
fn read_bounded(file: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let f = std::fs::File::open(file).map_err(|e| format!("cannot open: {e}"))?;
    let mut bytes = Vec::new();
    f.take(yaml::MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    yaml::check_size(bytes.len())?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 (byte {}); Kubernetes manifests are UTF-8",
            e.utf8_error().valid_up_to()
        )
    })
}

fn typed<T: DeserializeOwned>(
    value: serde_json::Value,
    origin: &Origin,
    ident: &str,
) -> Result<T, LoadError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        // Map keys in the path are the file's text: made printable and bounded.
        let path = limits::shown_max(&e.path().to_string(), MAX_SHOWN_PATH).into_owned();
        LoadError {
            origin: origin.clone(),
            object: ident.to_owned(),
            field: if path == "." {
                String::new()
            } else {
                format!(" field {path}")
            },
            message: limits::shown_max(&e.into_inner().to_string(), MAX_MESSAGE).into_owned(),
        }
    })
}

fn slice_service(slice: &EndpointSlice) -> Option<&String> {
    slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)
}

/// The files a config path names: the file itself, or every `.yaml`/`.yml` file under a
/// directory, sorted. Names starting with `.` are skipped (a ConfigMap volume keeps each file
/// three times: `x.yaml`, `..data/x.yaml` and `..<timestamp>/x.yaml`), symlinks to files are
/// followed, symlinks to directories are not (a link to `..` would loop), and at most
/// [`MAX_FILES`] files are read.
pub fn config_files(path: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    if !path.is_dir() {
        // Surface a missing file as an error rather than an empty config.
        std::fs::metadata(path)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") && p.is_file() {
                out.push(p);
                if out.len() > MAX_FILES {
                    return Err(std::io::Error::other(format!(
                        "more than {MAX_FILES} config files under {}",
                        limits::shown_max(&path.display().to_string(), MAX_SHOWN_PATH)
                    )));
                }
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
    fn peer_authentication_is_read_with_port_level_modes() {
        let mut s = Store::default();
        let errs = s.load_str(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: pa, namespace: foo}\n\
             spec:\n  selector: {matchLabels: {app: db}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    5432: {mode: DISABLE}\n",
            None,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let pa = &s.peer_authentications[&ObjectKey::new("foo", "pa")]
            .object
            .spec;
        assert_eq!(pa.mtls.as_ref().map(|m| m.mode.as_str()), Some("STRICT"));
        assert_eq!(pa.port_level_mtls["5432"].mode, "DISABLE");
        assert!(s.ignored.is_empty(), "read, not ignored");
        let errs = s.load_str(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: pa2, namespace: foo}\n\
             spec: {mtls: {mod: STRICT}}\n",
            None,
        );
        assert_eq!(errs.len(), 1, "a misspelt field is refused");
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
