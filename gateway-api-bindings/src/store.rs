//! A pure index of the Kubernetes objects the waypoint reads, fed by files (here) or by watchers.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use gateway_api::apis::standard::gatewayclasses::GatewayClass;
use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use serde::de::DeserializeOwned;

use crate::istio::{AuthorizationPolicy, RequestAuthentication, ServiceEntry};

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
    AuthorizationPolicy(AuthorizationPolicy),
    RequestAuthentication(RequestAuthentication),
    EndpointSlice(EndpointSlice),
    Pod(Pod),
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
    pub authorization_policies: BTreeMap<ObjectKey, Sourced<AuthorizationPolicy>>,
    pub request_authentications: BTreeMap<ObjectKey, Sourced<RequestAuthentication>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Sourced<EndpointSlice>>,
    pub pods: BTreeMap<ObjectKey, Sourced<Pod>>,
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
        macro_rules! put {
            ($map:ident, $k:expr, $o:expr) => {{
                self.$map.insert($k, Sourced { object: $o, origin });
            }};
        }
        match object {
            Object::Gateway(o) => put!(gateways, key_of(&o), o),
            Object::GatewayClass(o) => put!(gateway_classes, o.name_any(), o),
            Object::Service(o) => put!(services, key_of(&o), o),
            Object::Namespace(o) => put!(namespaces, o.name_any(), o),
            Object::ServiceEntry(o) => put!(service_entries, key_of(&o), o),
            Object::AuthorizationPolicy(o) => put!(authorization_policies, key_of(&o), o),
            Object::RequestAuthentication(o) => put!(request_authentications, key_of(&o), o),
            Object::EndpointSlice(o) => put!(endpoint_slices, key_of(&o), o),
            Object::Pod(o) => put!(pods, key_of(&o), o),
        }
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
        let parsed: Option<Result<Object, LoadError>> = match (group, kind.as_str()) {
            ("gateway.networking.k8s.io", "Gateway") => {
                Some(typed(value, origin, &ident).map(Object::Gateway))
            }
            ("gateway.networking.k8s.io", "GatewayClass") => {
                Some(typed(value, origin, &ident).map(Object::GatewayClass))
            }
            ("", "Service") => Some(typed(value, origin, &ident).map(Object::Service)),
            ("", "Namespace") => Some(typed(value, origin, &ident).map(Object::Namespace)),
            ("", "Pod") => Some(typed(value, origin, &ident).map(Object::Pod)),
            ("discovery.k8s.io", "EndpointSlice") => {
                Some(typed(value, origin, &ident).map(Object::EndpointSlice))
            }
            ("networking.istio.io", "ServiceEntry") => {
                Some(typed(value, origin, &ident).map(Object::ServiceEntry))
            }
            ("security.istio.io", "AuthorizationPolicy") => {
                Some(typed(value, origin, &ident).map(Object::AuthorizationPolicy))
            }
            ("security.istio.io", "RequestAuthentication") => {
                Some(typed(value, origin, &ident).map(Object::RequestAuthentication))
            }
            _ => None,
        };
        match parsed {
            Some(Ok(object)) => self.apply(object, origin.clone()),
            Some(Err(e)) => errors.push(e),
            None => {
                tracing::debug!(%origin, %ident, "skipping an object of a kind the waypoint does not read")
            }
        }
    }
}

fn typed<T: DeserializeOwned>(
    value: serde_yaml::Value,
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
