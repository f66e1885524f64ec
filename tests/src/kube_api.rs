//! An in-process Kubernetes API server speaking the real protocol over HTTPS with a bearer
//! token, for testing the waypoint's Kubernetes source without a cluster.
//!
//! It implements what a controller uses: list (with `limit`/`continue`, `fieldSelector` on
//! `metadata.name`/`metadata.namespace`, and the list's `resourceVersion`), watch (newline-
//! delimited `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK` events from a resourceVersion, `ERROR` 410
//! when that version has been compacted away, `timeoutSeconds`), get/create/replace with
//! resourceVersion conflicts (409), delete, and server-side-apply status patches. Tests can
//! compact history, break open watches, and stop and restart the server on the same address.
//!
//! Objects are kept as JSON, keyed by API group (any version is served) and plural.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use waypoint::tls::dev_ca::DevCa;

type Body = BoxBody<Bytes, Infallible>;

/// How many events the server remembers for watches resuming from an old resourceVersion.
const HISTORY: usize = 100_000;

/// `(group, plural)`: what an object is stored under.
type Resource = (String, String);

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    resource: Resource,
    kind: &'static str,
    object: Arc<Value>,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Resource, BTreeMap<(String, String), Value>>,
    history: VecDeque<Event>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted_below: u64,
    patches: Vec<Patch>,
    requests: u64,
    /// List responses (pages) served per resource.
    list_pages: BTreeMap<Resource, u64>,
    /// `(apiVersion, kind)` per resource, for bookmarks (clients decode them as the type).
    types: BTreeMap<Resource, (String, String)>,
    /// Server-side apply ownership of status fields: object -> field manager -> field paths.
    managed: BTreeMap<(Resource, String, String), BTreeMap<String, BTreeSet<String>>>,
}

/// A status patch the server received.
#[derive(Debug, Clone)]
pub struct Patch {
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub field_manager: String,
    pub force: bool,
    pub body: Value,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    /// Changes on every stop (ends open watches) and on `expire_watches` (410 into them).
    epoch: watch::Sender<(u64, bool)>,
    tls: Arc<rustls::ServerConfig>,
    token: String,
}

/// The fake API server. Dropping it stops it.
#[derive(Debug)]
pub struct FakeApiServer {
    pub addr: SocketAddr,
    /// A kubeconfig pointing at the server (CA file, token).
    pub kubeconfig: PathBuf,
    inner: Arc<Inner>,
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(mut t) = self.lock_tasks().take() {
            t.abort_all();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The plural the API server uses for `kind`.
pub fn plural(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    if k.ends_with('s') {
        format!("{k}es")
    } else {
        format!("{k}s")
    }
}

fn resource_of(object: &Value) -> anyhow::Result<Resource> {
    let api_version = object["apiVersion"].as_str().unwrap_or("");
    let kind = object["kind"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("object without kind"))?;
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    Ok((group.to_owned(), plural(kind)))
}

fn ns_name(object: &Value) -> (String, String) {
    let m = &object["metadata"];
    (
        m["namespace"].as_str().unwrap_or("").to_owned(),
        m["name"].as_str().unwrap_or("").to_owned(),
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn full(code: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    let text = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(code: u16, reason: &str, message: &str) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status(code, reason, message),
    )
}

impl FakeApiServer {
    /// Starts on `127.0.0.1` (any port), writing its CA and kubeconfig under `dir`.
    pub async fn start(dir: &Path) -> anyhow::Result<FakeApiServer> {
        std::fs::create_dir_all(dir)?;
        waypoint::tls::provider();
        let ca = DevCa::new("fake kube-apiserver CA")?;
        let issued = ca.issue_server(&["127.0.0.1", "localhost"], Duration::from_secs(86_400))?;
        let ca_path = dir.join("apiserver-ca.pem");
        std::fs::write(&ca_path, ca.root_pem())?;
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let token = format!("fake-token-{}", std::process::id());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters: [{{name: fake, cluster: {{server: \"https://{addr}\", certificate-authority: \"{}\"}}}}]\n\
                 users: [{{name: waypoint, user: {{token: {token}}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: waypoint}}}}]\n",
                ca_path.display()
            ),
        )?;
        let (events, _) = broadcast::channel(HISTORY);
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            events,
            epoch: watch::channel((0, false)).0,
            tls: Arc::new(tls),
            token,
        });
        let server = FakeApiServer {
            addr,
            kubeconfig,
            inner,
            tasks: Mutex::new(None),
        };
        server.serve(listener);
        Ok(server)
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Option<JoinSet<()>>> {
        lock(&self.tasks)
    }

    fn serve(&self, listener: TcpListener) {
        let mut set = JoinSet::new();
        let inner = self.inner.clone();
        set.spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(inner.tls.clone());
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, inner) = (acceptor.clone(), inner.clone());
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let inner = inner.clone();
                        async move { Ok::<_, Infallible>(inner.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
                // Reap finished connections so the set does not grow without bound.
                while conns.try_join_next().is_some() {}
            }
        });
        *self.lock_tasks() = Some(set);
    }

    /// Stops accepting and drops every connection (open watches end): an outage.
    pub async fn stop(&self) {
        let set = self.lock_tasks().take();
        if let Some(mut set) = set {
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
        self.inner.epoch.send_modify(|(e, _)| *e += 1);
    }

    /// Serves again on the same address.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    /// Creates or replaces an object (metadata.resourceVersion/generation/uid are managed).
    pub fn apply(&self, object: Value) -> anyhow::Result<()> {
        self.inner
            .put(object, None)
            .map(|_| ())
            .map_err(|(_, m)| anyhow::anyhow!(m))
    }

    /// Applies every document of a multi-document YAML text.
    pub fn apply_yaml(&self, text: &str) -> anyhow::Result<()> {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v = Value::deserialize(doc)?;
            if v.is_null() {
                continue;
            }
            self.apply(v)?;
        }
        Ok(())
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        self.inner
            .remove(&(group.to_owned(), plural(kind)), namespace, name)
            .is_some()
    }

    /// The stored object.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let st = lock(&self.inner.state);
        st.objects
            .get(&(group.to_owned(), plural(kind)))?
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// A server-side apply of `body` (apiVersion, kind, metadata name/namespace and status) on
    /// the object's status as `field_manager`: what another controller (istiod) writing beside
    /// the waypoint does. Recorded in [`Self::patches`].
    pub fn apply_status(
        &self,
        field_manager: &str,
        force: bool,
        body: Value,
    ) -> anyhow::Result<Value> {
        let resource = resource_of(&body)?;
        let (namespace, name) = ns_name(&body);
        let target = Target {
            resource,
            namespace: (!namespace.is_empty()).then_some(namespace),
            name: Some(name.clone()),
            status: true,
        };
        self.inner
            .apply_status(&target, &name, field_manager, force, body)
            .map_err(|(code, m)| anyhow::anyhow!("{code}: {m}"))
    }

    /// Which status fields each field manager owns on an object.
    pub fn managers(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> BTreeMap<String, BTreeSet<String>> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let key = (
            (group.to_owned(), plural(kind)),
            namespace.to_owned(),
            name.to_owned(),
        );
        lock(&self.inner.state)
            .managed
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// Status patches received so far.
    pub fn patches(&self) -> Vec<Patch> {
        lock(&self.inner.state).patches.clone()
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        lock(&self.inner.state).requests
    }

    /// List pages served so far for a resource (`group/version` as in `apiVersion`).
    pub fn list_pages(&self, api_version: &str, kind: &str) -> u64 {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let st = lock(&self.inner.state);
        st.list_pages
            .get(&(group.to_owned(), plural(kind)))
            .copied()
            .unwrap_or(0)
    }

    /// Forgets all history: a watch resuming from any earlier resourceVersion gets 410.
    pub fn compact(&self) {
        let mut st = lock(&self.inner.state);
        st.compacted_below = st.rv + 1;
        st.history.clear();
    }

    /// Compacts and sends `ERROR 410` into every open watch, as an API server does when a
    /// watcher falls behind: clients must relist.
    pub fn expire_watches(&self) {
        self.compact();
        self.inner.epoch.send_modify(|(e, expire)| {
            *e += 1;
            *expire = true;
        });
    }

    /// Sends a BOOKMARK with the current resourceVersion into every open watch.
    pub fn bookmark(&self) {
        let st = lock(&self.inner.state);
        let _ = self.inner.events.send(Event {
            rv: st.rv,
            resource: (String::new(), String::new()),
            kind: "BOOKMARK",
            object: Arc::new(Value::Null),
        });
    }
}

struct Query {
    watch: bool,
    resource_version: Option<u64>,
    limit: Option<usize>,
    /// The key of the last item of the previous page (`namespace/name`).
    cont: Option<(String, String)>,
    field_name: Option<String>,
    field_namespace: Option<String>,
    labels: Vec<(String, String)>,
    timeout: Option<u64>,
    bookmarks: bool,
    field_manager: String,
    force: bool,
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len() + 1
            && let Some(h) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query {
        watch: false,
        resource_version: None,
        limit: None,
        cont: None,
        field_name: None,
        field_namespace: None,
        labels: Vec::new(),
        timeout: None,
        bookmarks: false,
        field_manager: String::new(),
        force: false,
    };
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v);
        match k {
            "watch" => out.watch = v == "true" || v == "1",
            "resourceVersion" => out.resource_version = v.parse().ok(),
            "limit" => out.limit = v.parse().ok(),
            "continue" => {
                out.cont = v
                    .split_once('/')
                    .map(|(ns, name)| (ns.to_owned(), name.to_owned()));
            }
            "timeoutSeconds" => out.timeout = v.parse().ok(),
            "allowWatchBookmarks" => out.bookmarks = v == "true",
            "fieldManager" => out.field_manager = v,
            "force" => out.force = v == "true",
            "fieldSelector" => {
                for sel in v.split(',') {
                    if let Some(n) = sel.strip_prefix("metadata.name=") {
                        out.field_name = Some(n.to_owned());
                    } else if let Some(n) = sel.strip_prefix("metadata.namespace=") {
                        out.field_namespace = Some(n.to_owned());
                    }
                }
            }
            "labelSelector" => {
                for sel in v.split(',').filter(|s| !s.is_empty()) {
                    if let Some((lk, lv)) = sel.split_once('=') {
                        out.labels
                            .push((lk.to_owned(), lv.trim_start_matches('=').to_owned()));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// What a request path names.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => return None,
    };
    let t = |plural: &str, ns: Option<&str>, name: Option<&str>, status: bool| Target {
        resource: (group.to_owned(), plural.to_owned()),
        namespace: ns.map(str::to_owned),
        name: name.map(str::to_owned),
        status,
    };
    Some(match rest {
        [plural] => t(plural, None, None, false),
        ["namespaces", ns, plural] => t(plural, Some(ns), None, false),
        ["namespaces", ns, plural, name] => t(plural, Some(ns), Some(name), false),
        ["namespaces", ns, plural, name, "status"] => t(plural, Some(ns), Some(name), true),
        [plural, name] => t(plural, None, Some(name), false),
        [plural, name, "status"] => t(plural, None, Some(name), true),
        _ => return None,
    })
}

fn matches(q: &Query, ns_filter: Option<&str>, object: &Value) -> bool {
    let (ns, name) = ns_name(object);
    ns_filter.is_none_or(|f| f == ns)
        && q.field_name.as_ref().is_none_or(|n| *n == name)
        && q.field_namespace.as_ref().is_none_or(|n| *n == ns)
        && q.labels
            .iter()
            .all(|(k, v)| object["metadata"]["labels"][k.as_str()].as_str() == Some(v.as_str()))
}

/// The field paths of a status with their values: `conditions[<type>]` for each condition when
/// conditions are keyed by type (Gateway API), else one path per top-level key.
fn status_fields(keyed_conditions: bool, status: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (k, v) in status.as_object().into_iter().flatten() {
        match (k.as_str(), v.as_array()) {
            ("conditions", Some(conds)) if keyed_conditions => {
                for c in conds {
                    let t = c["type"].as_str().unwrap_or("");
                    out.push((format!("conditions[{t}]"), c.clone()));
                }
            }
            _ => out.push((k.clone(), v.clone())),
        }
    }
    out
}

fn condition_type(path: &str) -> Option<&str> {
    path.strip_prefix("conditions[")?.strip_suffix(']')
}

fn set_status_field(status: &mut Value, path: &str, value: Value) {
    let Some(t) = condition_type(path) else {
        status[path] = value;
        return;
    };
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    if let Some(conds) = status["conditions"].as_array_mut() {
        match conds.iter_mut().find(|c| c["type"] == t) {
            Some(c) => *c = value,
            None => conds.push(value),
        }
    }
}

fn remove_status_field(status: &mut Value, path: &str) {
    match condition_type(path) {
        Some(t) => {
            if let Some(conds) = status["conditions"].as_array_mut() {
                conds.retain(|c| c["type"] != t);
            }
        }
        None => {
            if let Some(m) = status.as_object_mut() {
                m.remove(path);
            }
        }
    }
}

/// `metadata.managedFields` as the API server shows it (status subresource, Apply).
fn managed_fields(owners: &BTreeMap<String, BTreeSet<String>>) -> Value {
    let entries: Vec<Value> = owners
        .iter()
        .map(|(manager, fields)| {
            let mut f = serde_json::Map::new();
            for path in fields {
                match condition_type(path) {
                    Some(t) => {
                        let conds = f.entry("f:conditions").or_insert_with(|| json!({}));
                        conds[format!("k:{{\"type\":\"{t}\"}}")] = json!({});
                    }
                    None => {
                        f.insert(format!("f:{path}"), json!({}));
                    }
                }
            }
            json!({
                "manager": manager,
                "operation": "Apply",
                "subresource": "status",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": f},
            })
        })
        .collect();
    entries.into()
}

impl Inner {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        lock(&self.state).requests += 1;
        let authorized = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {}", self.token));
        if !authorized {
            return error(401, "Unauthorized", "Unauthorized");
        }
        let Some(target) = parse_path(req.uri().path()) else {
            return error(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        };
        let q = parse_query(req.uri().query());
        let method = req.method().clone();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(400, "BadRequest", "unreadable body"),
        };
        let parse_body = || -> Result<Value, Box<Response<Body>>> {
            serde_json::from_slice(&body)
                .or_else(|_| serde_yaml::from_slice(&body))
                .map_err(|e| Box::new(error(400, "BadRequest", &format!("bad body: {e}"))))
        };
        match (method, &target.name) {
            (Method::GET, None) if q.watch => self.watch(target, q),
            (Method::GET, None) => self.list(&target, &q),
            (Method::GET, Some(name)) => {
                let st = lock(&self.state);
                let ns = target.namespace.clone().unwrap_or_default();
                match st
                    .objects
                    .get(&target.resource)
                    .and_then(|m| m.get(&(ns, name.clone())))
                {
                    Some(o) => full(StatusCode::OK, o),
                    None => error(
                        404,
                        "NotFound",
                        &format!("{} \"{name}\" not found", target.resource.1),
                    ),
                }
            }
            (Method::POST, None) => {
                let mut o = match parse_body() {
                    Ok(o) => o,
                    Err(r) => return *r,
                };
                if let Some(ns) = &target.namespace {
                    o["metadata"]["namespace"] = ns.clone().into();
                }
                self.respond_put(o, Some(true))
            }
            (Method::PUT, Some(_)) => match parse_body() {
                Ok(o) => self.respond_put(o, Some(false)),
                Err(r) => *r,
            },
            (Method::PATCH, Some(name)) if target.status => {
                let patch = match parse_body() {
                    Ok(o) => o,
                    Err(r) => return *r,
                };
                self.patch_status(&target, name, &q, patch)
            }
            (Method::DELETE, Some(name)) => {
                let ns = target.namespace.clone().unwrap_or_default();
                match self.remove(&target.resource, &ns, name) {
                    Some(o) => full(StatusCode::OK, &o),
                    None => error(404, "NotFound", "not found"),
                }
            }
            _ => error(405, "MethodNotAllowed", "method not allowed"),
        }
    }

    fn respond_put(&self, o: Value, create: Option<bool>) -> Response<Body> {
        match self.put(o, create) {
            Ok(stored) => full(StatusCode::OK, &stored),
            Err((code, message)) => {
                let reason = if code == 409 {
                    "Conflict"
                } else {
                    "BadRequest"
                };
                error(code, reason, &message)
            }
        }
    }

    /// Stores `o`. `create`: `Some(true)` must not exist, `Some(false)` must exist and match
    /// the given resourceVersion, `None` either (test setup).
    fn put(&self, mut o: Value, create: Option<bool>) -> Result<Value, (u16, String)> {
        let resource = resource_of(&o).map_err(|e| (400, e.to_string()))?;
        let key = ns_name(&o);
        let mut st = lock(&self.state);
        let existing = st.objects.get(&resource).and_then(|m| m.get(&key)).cloned();
        match (create, &existing) {
            (Some(true), Some(_)) => {
                return Err((409, format!("{} \"{}\" already exists", resource.1, key.1)));
            }
            (Some(false), None) => return Err((404, "not found".into())),
            (Some(false), Some(e)) => {
                let given = o["metadata"]["resourceVersion"].as_str().unwrap_or("");
                if !given.is_empty()
                    && given != e["metadata"]["resourceVersion"].as_str().unwrap_or("")
                {
                    return Err((409, "the object has been modified; please apply your changes to the latest version".into()));
                }
            }
            _ => {}
        }
        st.rv += 1;
        let rv = st.rv;
        let spec_of = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
                m.remove("status");
            }
            v
        };
        let generation = match &existing {
            Some(e) if spec_of(e) == spec_of(&o) => {
                e["metadata"]["generation"].as_i64().unwrap_or(1)
            }
            Some(e) => e["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
            None => 1,
        };
        let m = &mut o["metadata"];
        m["resourceVersion"] = rv.to_string().into();
        m["generation"] = generation.into();
        m["uid"] = existing
            .as_ref()
            .and_then(|e| e["metadata"]["uid"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("uid-{rv}"))
            .into();
        if m["creationTimestamp"].is_null() {
            m["creationTimestamp"] = "2026-11-23T00:00:00Z".into();
        }
        if let (Some(e), true) = (&existing, o.get("status").is_none()) {
            // Updates through the main resource do not change status.
            if let Some(s) = e.get("status") {
                o["status"] = s.clone();
            }
        }
        match &existing {
            // Status ownership survives updates of the main resource.
            Some(e) if e["metadata"].get("managedFields").is_some() => {
                o["metadata"]["managedFields"] = e["metadata"]["managedFields"].clone();
            }
            Some(_) => {}
            None => {
                st.managed
                    .remove(&(resource.clone(), key.0.clone(), key.1.clone()));
            }
        }
        let kind = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects
            .entry(resource.clone())
            .or_default()
            .insert(key, o.clone());
        self.record(&mut st, rv, resource, kind, o.clone());
        Ok(o)
    }

    fn remove(&self, resource: &Resource, ns: &str, name: &str) -> Option<Value> {
        let mut st = lock(&self.state);
        let mut o = st
            .objects
            .get_mut(resource)?
            .remove(&(ns.to_owned(), name.to_owned()))?;
        st.managed
            .remove(&(resource.clone(), ns.to_owned(), name.to_owned()));
        st.rv += 1;
        let rv = st.rv;
        o["metadata"]["resourceVersion"] = rv.to_string().into();
        self.record(&mut st, rv, resource.clone(), "DELETED", o.clone());
        Some(o)
    }

    fn record(
        &self,
        st: &mut State,
        rv: u64,
        resource: Resource,
        kind: &'static str,
        object: Value,
    ) {
        let e = Event {
            rv,
            resource,
            kind,
            object: Arc::new(object),
        };
        if st.history.len() == HISTORY {
            st.history.pop_front();
            st.compacted_below = st.history.front().map_or(rv, |e| e.rv);
        }
        st.history.push_back(e.clone());
        let _ = self.events.send(e);
    }

    fn patch_status(&self, target: &Target, name: &str, q: &Query, patch: Value) -> Response<Body> {
        if q.field_manager.is_empty() {
            return error(422, "Invalid", "fieldManager is required for apply patches");
        }
        match self.apply_status(target, name, &q.field_manager, q.force, patch) {
            Ok(o) => full(StatusCode::OK, &o),
            Err((404, m)) => error(404, "NotFound", &m),
            Err((409, m)) => error(409, "Conflict", &m),
            Err((code, m)) => error(code, "Invalid", &m),
        }
    }

    /// Server-side apply on `status` (see the module docs for the ownership rules).
    fn apply_status(
        &self,
        target: &Target,
        name: &str,
        manager: &str,
        force: bool,
        patch: Value,
    ) -> Result<Value, (u16, String)> {
        let ns = target.namespace.clone().unwrap_or_default();
        let mut st = lock(&self.state);
        let Some(mut o) = st
            .objects
            .get(&target.resource)
            .and_then(|m| m.get(&(ns.clone(), name.to_owned())))
            .cloned()
        else {
            return Err((404, format!("{} \"{name}\" not found", target.resource.1)));
        };
        st.patches.push(Patch {
            resource: target.resource.1.clone(),
            namespace: ns.clone(),
            name: name.to_owned(),
            field_manager: manager.to_owned(),
            force,
            body: patch.clone(),
        });
        let keyed = target.resource.0 == "gateway.networking.k8s.io";
        let applied = status_fields(keyed, patch.get("status").unwrap_or(&Value::Null));
        let object_key = (target.resource.clone(), ns.clone(), name.to_owned());
        let mut owners = st.managed.get(&object_key).cloned().unwrap_or_default();
        if !o["status"].is_object() {
            o["status"] = json!({});
        }
        let current = status_fields(keyed, &o["status"]);
        if !force {
            for (path, value) in &applied {
                let other = owners
                    .iter()
                    .find(|(m, fields)| m.as_str() != manager && fields.contains(path));
                let same = current.iter().any(|(p, v)| p == path && v == value);
                if let (Some((m, _)), false) = (other, same) {
                    return Err((
                        409,
                        format!(
                            "Apply failed with 1 conflict: conflict with \"{m}\": .status.{path}"
                        ),
                    ));
                }
            }
        }
        let mine: BTreeSet<String> = applied.iter().map(|(p, _)| p.clone()).collect();
        let before = owners.remove(manager).unwrap_or_default();
        for fields in owners.values_mut() {
            fields.retain(|f| !mine.contains(f));
        }
        for dropped in before.difference(&mine) {
            if !owners.values().any(|fields| fields.contains(dropped)) {
                remove_status_field(&mut o["status"], dropped);
            }
        }
        for (path, value) in applied {
            set_status_field(&mut o["status"], &path, value);
        }
        owners.retain(|_, fields| !fields.is_empty());
        if !mine.is_empty() {
            owners.insert(manager.to_owned(), mine);
        }
        o["metadata"]["managedFields"] = managed_fields(&owners);
        st.managed.insert(object_key, owners);
        st.rv += 1;
        let rv = st.rv;
        o["metadata"]["resourceVersion"] = rv.to_string().into();
        st.objects
            .entry(target.resource.clone())
            .or_default()
            .insert((ns, name.to_owned()), o.clone());
        self.record(&mut st, rv, target.resource.clone(), "MODIFIED", o.clone());
        Ok(o)
    }

    fn list(&self, target: &Target, q: &Query) -> Response<Body> {
        use std::ops::Bound;
        let mut st = lock(&self.state);
        *st.list_pages.entry(target.resource.clone()).or_default() += 1;
        // Pages resume after the last key served, so listing n objects stays O(n).
        let from = q.cont.clone().map_or(Bound::Unbounded, Bound::Excluded);
        let limit = q.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items: Vec<&Value> = Vec::new();
        let mut last = None;
        let mut more = false;
        let all = st.objects.get(&target.resource);
        for (key, o) in all
            .into_iter()
            .flat_map(|m| m.range((from.clone(), Bound::Unbounded)))
        {
            if !matches(q, target.namespace.as_deref(), o) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(o);
            last = Some(key);
        }
        let mut meta = json!({"resourceVersion": st.rv.to_string()});
        if let Some((ns, name)) = last.filter(|_| more) {
            meta["continue"] = format!("{ns}/{name}").into();
        }
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct List<'a> {
            api_version: &'static str,
            kind: &'static str,
            metadata: Value,
            items: Vec<&'a Value>,
        }
        full(
            StatusCode::OK,
            &List {
                api_version: "v1",
                kind: "List",
                metadata: meta,
                items,
            },
        )
    }

    fn watch(self: Arc<Self>, target: Target, q: Query) -> Response<Body> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
        // Subscribe before reading history so nothing falls between the two.
        let mut live = self.events.subscribe();
        let mut epoch = self.epoch.subscribe();
        let line = |kind: &str, object: &Value| {
            Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
        };
        let (backlog, mut last, gone, types) = {
            let st = lock(&self.state);
            let types = st.types.get(&target.resource).cloned().unwrap_or_else(|| {
                let g = &target.resource.0;
                (
                    if g.is_empty() {
                        "v1".into()
                    } else {
                        format!("{g}/v1")
                    },
                    String::new(),
                )
            });
            let from = q.resource_version.unwrap_or(0);
            if from != 0 && from < st.compacted_below {
                (Vec::new(), from, true, types)
            } else {
                let backlog: Vec<Bytes> = st
                    .history
                    .iter()
                    .filter(|e| e.rv > from && e.resource == target.resource)
                    .filter(|e| matches(&q, target.namespace.as_deref(), &e.object))
                    .map(|e| line(e.kind, &e.object))
                    .collect();
                (backlog, st.rv.max(from), false, types)
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(q.timeout.unwrap_or(1800));
        tokio::spawn(async move {
            let expired = || line("ERROR", &status(410, "Expired", "too old resource version"));
            if gone {
                let _ = tx.send(expired()).await;
                return;
            }
            for b in backlog {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
            if q.bookmarks {
                let bm = json!({"apiVersion": types.0, "kind": types.1, "metadata": {"resourceVersion": last.to_string()}});
                if tx.send(line("BOOKMARK", &bm)).await.is_err() {
                    return;
                }
            }
            epoch.borrow_and_update();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return,
                    r = epoch.changed() => {
                        if r.is_ok() && epoch.borrow().1 {
                            let _ = tx.send(expired()).await;
                        }
                        return;
                    }
                    e = live.recv() => {
                        let e = match e {
                            Ok(e) => e,
                            // Fell behind the broadcast: a real server would also drop us.
                            Err(_) => { let _ = tx.send(expired()).await; return; }
                        };
                        if e.kind == "BOOKMARK" {
                            if q.bookmarks {
                                let bm = json!({"apiVersion": types.0, "kind": types.1, "metadata": {"resourceVersion": e.rv.max(last).to_string()}});
                                if tx.send(line("BOOKMARK", &bm)).await.is_err() { return; }
                            }
                            continue;
                        }
                        if e.rv <= last || e.resource != target.resource
                            || !matches(&q, target.namespace.as_deref(), &e.object) {
                            continue;
                        }
                        last = e.rv;
                        if tx.send(line(e.kind, &e.object)).await.is_err() { return; }
                    }
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    }
}
