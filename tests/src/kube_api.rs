//! An in-process Kubernetes API server speaking the real protocol over HTTPS with bearer tokens,
//! for testing the waypoint's Kubernetes source without a cluster. `kubectl` runs against it
//! (tests/tests/kubectl.rs), so it cannot quietly disagree with a real client.
//!
//! What it serves is a table written from the published definitions ([`resources`]): Kubernetes'
//! built-in resources, Gateway API's and Istio's CRDs, each under its real plural, scope, versions
//! and subresources. Discovery (`/api`, `/api/v1`, `/apis`, `/apis/<group>`,
//! `/apis/<group>/<version>`, `/version`, and `/openapi/v3` cut down to the PATCH operations
//! kubectl looks at) is built from that table; any other path, a version a
//! resource does not serve, a subresource it does not have, or a CRD a test uninstalled gets 404
//! with the API server's `Status` body.
//!
//! It implements what a controller and `kubectl` use: list (with `limit`/`continue`,
//! `fieldSelector` on `metadata.name`/`metadata.namespace`, `labelSelector` equality, and the
//! list's `resourceVersion`), watch (newline-delimited `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`
//! events from a resourceVersion, `ERROR` 410 when that version has been compacted away,
//! `timeoutSeconds`), get/create/replace with resourceVersion conflicts (409), delete,
//! server-side apply (on objects, simplified: fields given replace fields held; and on `status`,
//! with ownership per field manager), and JSON merge patches.
//!
//! Requests are authenticated by bearer token: the default kubeconfig is a cluster admin
//! (`system:masters`); [`FakeApiServer::service_account_kubeconfig`] gives a service account's
//! token, whose requests RBAC decides from the roles and bindings stored in the server
//! ([`rbac`]), with the API server's 403 when they do not allow it.
//!
//! Tests can compact history, end or expire open watches, stop and restart the server on the
//! same address, uninstall a CRD, make a resource answer 403 or another error, slow every
//! answer down, and count the requests per path and status.
//!
//! Objects are kept as JSON, keyed by API group and plural; every served version of a resource
//! shows the same objects (the definitions here differ in nothing but the version).

pub mod rbac;
pub mod resources;

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

use self::rbac::{Attributes, Policy, User};
use self::resources::Served;

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

/// What a test made a resource answer instead of the truth.
#[derive(Debug, Clone)]
struct Fault {
    group: String,
    /// `plural` or `plural/subresource`.
    resource: String,
    namespace: Option<String>,
    /// 403 answers as RBAC would; anything else with that status.
    code: u16,
}

/// Requests served: `(verb, path, status) -> count`.
pub type RequestCounts = BTreeMap<(String, String, u16), u64>;

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
    /// Server-side apply ownership of status fields: object -> field manager -> field paths.
    managed: BTreeMap<(Resource, String, String), BTreeMap<String, BTreeSet<String>>>,
    /// CRDs a test uninstalled.
    uninstalled: BTreeSet<Resource>,
    faults: Vec<Fault>,
    latency: Duration,
    /// Bearer token -> who it authenticates.
    tokens: BTreeMap<String, User>,
    counts: RequestCounts,
}

/// A status patch the server received.
#[derive(Debug, Clone)]
pub struct Patch {
    /// The plural.
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
    /// Changes on every stop and `end_watches` (ends open watches) and on `expire_watches`
    /// (410 into them).
    epoch: watch::Sender<(u64, bool)>,
    tls: Arc<rustls::ServerConfig>,
    addr: SocketAddr,
}

/// The fake API server. Dropping it stops it.
#[derive(Debug)]
pub struct FakeApiServer {
    pub addr: SocketAddr,
    /// A kubeconfig pointing at the server as the cluster admin (CA file, token).
    pub kubeconfig: PathBuf,
    dir: PathBuf,
    ca_path: PathBuf,
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

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

fn version_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or(api_version, |(_, v)| v)
}

/// The served resource an object of `apiVersion`/`kind` is stored under.
fn served_for(api_version: &str, kind: &str) -> anyhow::Result<&'static Served> {
    let group = group_of(api_version);
    let s = resources::by_kind(group, kind).ok_or_else(|| {
        anyhow::anyhow!("no matches for kind \"{kind}\" in version \"{api_version}\"")
    })?;
    anyhow::ensure!(
        s.versions.contains(&version_of(api_version)),
        "no matches for kind \"{kind}\" in version \"{api_version}\""
    );
    Ok(s)
}

fn key_of(s: &Served) -> Resource {
    (s.group.to_owned(), s.plural.to_owned())
}

fn resource_of(object: &Value) -> anyhow::Result<(Resource, &'static Served)> {
    let api_version = object["apiVersion"].as_str().unwrap_or("");
    let kind = object["kind"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("object without kind"))?;
    let s = served_for(api_version, kind)?;
    Ok((key_of(s), s))
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

/// The API server's answer for a path it does not serve.
fn not_served() -> Response<Body> {
    let mut body = status(
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
    body["details"] = json!({});
    full(StatusCode::NOT_FOUND, &body)
}

/// `<plural>.<group> "<name>" not found`, as the API server words a missing object.
fn not_found(s: &Served, name: &str) -> Response<Body> {
    let gr = if s.group.is_empty() {
        s.plural.to_owned()
    } else {
        format!("{}.{}", s.plural, s.group)
    };
    let mut body = status(404, "NotFound", &format!("{gr} \"{name}\" not found"));
    body["details"] = json!({"name": name, "group": s.group, "kind": s.plural});
    full(StatusCode::NOT_FOUND, &body)
}

/// The reason the API server gives with a status code.
fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
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
        let token = format!("fake-admin-token-{}", std::process::id());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (events, _) = broadcast::channel(HISTORY);
        let state = State {
            tokens: BTreeMap::from([(token.clone(), User::admin())]),
            ..State::default()
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            events,
            epoch: watch::channel((0, false)).0,
            tls: Arc::new(tls),
            addr,
        });
        let mut server = FakeApiServer {
            addr,
            kubeconfig: PathBuf::new(),
            dir: dir.to_owned(),
            ca_path,
            inner,
            tasks: Mutex::new(None),
        };
        server.kubeconfig = server.write_kubeconfig("kubeconfig", "admin", &token)?;
        server.serve(listener);
        Ok(server)
    }

    fn write_kubeconfig(&self, file: &str, user: &str, token: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(file);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters: [{{name: fake, cluster: {{server: \"https://{}\", certificate-authority: \"{}\"}}}}]\n\
                 users: [{{name: {user}, user: {{token: {token}}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: {user}}}}}]\n",
                self.addr,
                self.ca_path.display()
            ),
        )?;
        Ok(path)
    }

    /// A bearer token for the service account `namespace/name`, as the kubelet projects one into
    /// a pod. Valid while the ServiceAccount object exists; RBAC decides what it may do.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let token = format!("sa-token.{namespace}.{name}.{}", std::process::id());
        lock(&self.inner.state)
            .tokens
            .insert(token.clone(), User::service_account(namespace, name));
        token
    }

    /// A kubeconfig speaking as the service account `namespace/name`.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        let token = self.service_account_token(namespace, name);
        self.write_kubeconfig(
            &format!("kubeconfig-{namespace}-{name}"),
            &format!("{namespace}-{name}"),
            &token,
        )
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
        self.inner.epoch.send_modify(|(e, expire)| {
            *e += 1;
            *expire = false;
        });
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

    /// The stored resource of `apiVersion`/`kind`; panics on a kind the server does not define
    /// (a test naming a kind wrongly should fail loudly).
    fn resource(api_version: &str, kind: &str) -> Resource {
        served_for(api_version, kind)
            .map(key_of)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        self.inner
            .remove(&Self::resource(api_version, kind), namespace, name)
            .is_some()
    }

    /// The stored object.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = lock(&self.inner.state);
        st.objects
            .get(&Self::resource(api_version, kind))?
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
        let (resource, _) = resource_of(&body)?;
        let (namespace, name) = ns_name(&body);
        self.inner
            .apply_status(&resource, &namespace, &name, field_manager, force, body)
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
        let key = (
            Self::resource(api_version, kind),
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

    /// Requests served so far, per `(verb, path, status)`. The verb is the authorizer's
    /// (`list`, `watch`, `get`, `create`, `update`, `patch`, `delete`); the path has no query.
    pub fn request_counts(&self) -> RequestCounts {
        lock(&self.inner.state).counts.clone()
    }

    /// How many requests `verb` (any when `None`) on exactly `path` got `status` (any when
    /// `None`).
    pub fn count(&self, verb: Option<&str>, path: &str, status: Option<u16>) -> u64 {
        lock(&self.inner.state)
            .counts
            .iter()
            .filter(|((v, p, c), _)| {
                p == path && verb.is_none_or(|w| w == v) && status.is_none_or(|s| s == *c)
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// List pages served so far for a resource (`group/version` as in `apiVersion`).
    pub fn list_pages(&self, api_version: &str, kind: &str) -> u64 {
        let st = lock(&self.inner.state);
        st.list_pages
            .get(&Self::resource(api_version, kind))
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

    /// Ends every open watch cleanly mid-stream, as an API server does at `timeoutSeconds` or
    /// when its watch cache restarts: clients watch again from their last resourceVersion.
    pub fn end_watches(&self) {
        self.inner.epoch.send_modify(|(e, expire)| {
            *e += 1;
            *expire = false;
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

    /// Uninstalls the CRD of `group`'s `plural`: its objects are deleted, open watches end, and
    /// discovery and every request for it answer 404 until [`Self::install_crd`].
    pub fn uninstall_crd(&self, group: &str, plural: &str) {
        let s = resources::by_plural(group, plural)
            .filter(|s| s.crd)
            .unwrap_or_else(|| panic!("{plural}.{group} is not a CRD here"));
        let resource = key_of(s);
        let keys: Vec<(String, String)> = {
            let mut st = lock(&self.inner.state);
            st.uninstalled.insert(resource.clone());
            st.objects
                .get(&resource)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        for (ns, name) in keys {
            self.inner.remove(&resource, &ns, &name);
        }
        self.end_watches();
    }

    /// Installs a CRD again (every CRD in the table is installed at start).
    pub fn install_crd(&self, group: &str, plural: &str) {
        lock(&self.inner.state)
            .uninstalled
            .remove(&(group.to_owned(), plural.to_owned()));
    }

    /// Every request for `group`'s `resource` (`plural` or `plural/status`), in `namespace` or
    /// anywhere, is denied with RBAC's 403, whoever asks.
    pub fn forbid(&self, group: &str, resource: &str, namespace: Option<&str>) {
        self.fault(group, resource, namespace, 403);
    }

    /// Every request for `group`'s `resource`, in `namespace` or anywhere, answers `code`
    /// (with a `Status` body).
    pub fn fail(&self, group: &str, resource: &str, namespace: Option<&str>, code: u16) {
        self.fault(group, resource, namespace, code);
    }

    fn fault(&self, group: &str, resource: &str, namespace: Option<&str>, code: u16) {
        lock(&self.inner.state).faults.push(Fault {
            group: group.to_owned(),
            resource: resource.to_owned(),
            namespace: namespace.map(str::to_owned),
            code,
        });
    }

    /// Removes every [`Self::forbid`] and [`Self::fail`].
    pub fn clear_faults(&self) {
        lock(&self.inner.state).faults.clear();
    }

    /// Every answer waits this long first (a slow API server).
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.inner.state).latency = latency;
    }

    /// Whether the roles and bindings stored now let `user` do this (the check each request
    /// gets).
    pub fn allows(
        &self,
        user: &User,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> bool {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let a = Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        let st = lock(&self.inner.state);
        policy(&st).allows(user, &a)
    }
}

fn policy(st: &State) -> Policy<'_> {
    let get = |plural: &str| {
        st.objects
            .get(&("rbac.authorization.k8s.io".to_owned(), plural.to_owned()))
    };
    Policy {
        cluster_roles: get("clusterroles"),
        cluster_role_bindings: get("clusterrolebindings"),
        roles: get("roles"),
        role_bindings: get("rolebindings"),
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
    dry_run: bool,
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
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
        dry_run: false,
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
            "dryRun" => out.dry_run = v == "All",
            "fieldSelector" => {
                for sel in v.split(',') {
                    let sel = sel.replace("==", "=");
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
enum Route {
    /// `/version`, `/api`, `/apis`, `/apis/<g>`, `/api/v1`, `/apis/<g>/<v>`.
    Discovery(Discovery),
    Resource(Target),
    Unknown,
}

enum Discovery {
    Version,
    OpenApiIndex,
    OpenApi(String, String),
    CoreVersions,
    Groups,
    Group(String),
    Resources(String, String),
}

/// A resource request.
struct Target {
    served: &'static Served,
    resource: Resource,
    /// The version asked for.
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn api_version(&self) -> String {
        self.served.group_version(&self.version)
    }

    fn ns(&self) -> String {
        self.namespace.clone().unwrap_or_default()
    }
}

fn parse_path(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Route::Discovery(Discovery::Version),
        ["openapi", "v3"] => return Route::Discovery(Discovery::OpenApiIndex),
        ["openapi", "v3", "api", v] => {
            return Route::Discovery(Discovery::OpenApi(String::new(), (*v).to_owned()));
        }
        ["openapi", "v3", "apis", g, v] => {
            return Route::Discovery(Discovery::OpenApi((*g).to_owned(), (*v).to_owned()));
        }
        ["api"] => return Route::Discovery(Discovery::CoreVersions),
        ["apis"] => return Route::Discovery(Discovery::Groups),
        ["apis", g] => return Route::Discovery(Discovery::Group((*g).to_owned())),
        ["api", v] => {
            return Route::Discovery(Discovery::Resources(String::new(), (*v).to_owned()));
        }
        ["apis", g, v] => {
            return Route::Discovery(Discovery::Resources((*g).to_owned(), (*v).to_owned()));
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::Unknown,
    };
    // As the API server's RequestInfo reads it: `namespaces/<ns>/...` scopes what follows,
    // and `namespaces/<ns>` alone is the Namespace object.
    let (namespace, rest): (Option<&str>, &[&str]) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => (Some(*ns), more),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(*n), None),
        [p, n, s] => (*p, Some(*n), Some(*s)),
        _ => return Route::Unknown,
    };
    let Some(served) = resources::by_plural(group, plural) else {
        return Route::Unknown;
    };
    Route::Resource(Target {
        served,
        resource: key_of(served),
        version: version.to_owned(),
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        subresource: sub.map(str::to_owned),
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

/// `object` as served at `api_version`.
fn at_version(object: &Value, api_version: &str) -> Value {
    let mut o = object.clone();
    if o.is_object() {
        o["apiVersion"] = api_version.into();
    }
    o
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
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

/// The authorizer's verb for a resource request.
fn verb_of(method: &Method, target: &Target, q: &Query) -> &'static str {
    match (method, target.name.is_some()) {
        (&Method::GET, _) if q.watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

impl Inner {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let (verb, response) = self.clone().route(req).await;
        let mut st = lock(&self.state);
        *st.counts
            .entry((verb, path, response.status().as_u16()))
            .or_default() += 1;
        response
    }

    /// The answer, and the verb it is counted under.
    async fn route(self: Arc<Self>, req: Request<Incoming>) -> (String, Response<Body>) {
        let latency = {
            let mut st = lock(&self.state);
            st.requests += 1;
            st.latency
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let token = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let user = {
            let st = lock(&self.state);
            token.and_then(|t| st.tokens.get(&t).cloned()).filter(|u| {
                // A service account's token is good while its ServiceAccount exists.
                match u.name.strip_prefix("system:serviceaccount:") {
                    Some(sa) => sa.split_once(':').is_some_and(|(ns, name)| {
                        st.objects
                            .get(&(String::new(), "serviceaccounts".to_owned()))
                            .is_some_and(|m| m.contains_key(&(ns.to_owned(), name.to_owned())))
                    }),
                    None => true,
                }
            })
        };
        let Some(user) = user else {
            return ("".into(), error(401, "Unauthorized", "Unauthorized"));
        };
        let method = req.method().clone();
        let target = match parse_path(req.uri().path()) {
            Route::Discovery(d) if method == Method::GET => {
                return ("get".into(), self.discovery(d));
            }
            Route::Resource(t) => t,
            Route::Discovery(_) | Route::Unknown => return ("".into(), not_served()),
        };
        let q = parse_query(req.uri().query());
        let verb = verb_of(&method, &target, &q);
        if let Some(r) = self.refuse(&target, &q, verb, &user) {
            return (verb.into(), r);
        }
        let content_type = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return (verb.into(), error(400, "BadRequest", "unreadable body")),
        };
        (
            verb.into(),
            self.serve_resource(method, target, q, &content_type, &body),
        )
    }

    /// 404 for what is not served, a test's fault, or RBAC's 403.
    fn refuse(
        &self,
        target: &Target,
        q: &Query,
        verb: &str,
        user: &User,
    ) -> Option<Response<Body>> {
        let s = target.served;
        let st = lock(&self.state);
        let sub_ok = target
            .subresource
            .as_deref()
            .is_none_or(|sub| s.subresources.contains(&sub));
        let scope_ok = match (s.namespaced, &target.namespace, &target.name) {
            (false, Some(_), _) => false,
            // A namespaced object is only ever named inside its namespace.
            (true, None, Some(_)) => false,
            _ => true,
        };
        if st.uninstalled.contains(&target.resource)
            || !s.versions.contains(&target.version.as_str())
            || !sub_ok
            || !scope_ok
        {
            return Some(not_served());
        }
        let a = Attributes {
            verb: verb.to_owned(),
            group: s.group.to_owned(),
            resource: s.plural.to_owned(),
            subresource: target.subresource.clone().unwrap_or_default(),
            namespace: target.ns(),
            // A list or watch of one name (fieldSelector) is authorized for that name.
            name: target
                .name
                .clone()
                .or_else(|| {
                    q.field_name
                        .clone()
                        .filter(|_| verb == "list" || verb == "watch")
                })
                .unwrap_or_default(),
        };
        let combined = match &target.subresource {
            Some(sub) => format!("{}/{sub}", s.plural),
            None => s.plural.to_owned(),
        };
        let fault = st.faults.iter().find(|f| {
            f.group == s.group
                && f.resource == combined
                && f.namespace.as_ref().is_none_or(|n| *n == a.namespace)
        });
        match fault {
            Some(f) if f.code == 403 => {
                return Some(full(StatusCode::FORBIDDEN, &a.forbidden(user)));
            }
            Some(f) => {
                return Some(error(
                    f.code,
                    reason_for(f.code),
                    &format!("injected failure for {combined}"),
                ));
            }
            None => {}
        }
        (!policy(&st).allows(user, &a)).then(|| full(StatusCode::FORBIDDEN, &a.forbidden(user)))
    }

    fn discovery(&self, d: Discovery) -> Response<Body> {
        let st = lock(&self.state);
        let installed = || {
            resources::SERVED
                .iter()
                .filter(|s| !st.uninstalled.contains(&key_of(s)))
        };
        let doc = match d {
            Discovery::Version => Some(json!({
                "major": "1", "minor": "32", "gitVersion": "v1.32.4",
                "gitCommit": "59526cd4867447956156ae3a602fcbac10a2c335", "gitTreeState": "clean",
                "buildDate": "2025-04-22T16:02:27Z", "goVersion": "go1.23.6", "compiler": "gc",
                "platform": "linux/amd64",
            })),
            Discovery::OpenApiIndex => Some(resources::openapi_index(installed())),
            Discovery::OpenApi(g, v) => resources::openapi_group_version(installed(), &g, &v),
            Discovery::CoreVersions => Some(resources::core_versions(&self.addr.to_string())),
            Discovery::Groups => Some(resources::group_list(installed())),
            Discovery::Group(g) => resources::group(installed(), &g),
            Discovery::Resources(g, v) => resources::resource_list(installed(), &g, &v),
        };
        match doc {
            Some(d) => full(StatusCode::OK, &d),
            None => not_served(),
        }
    }

    fn serve_resource(
        self: Arc<Self>,
        method: Method,
        target: Target,
        q: Query,
        content_type: &str,
        body: &Bytes,
    ) -> Response<Body> {
        let parse_body = || -> Result<Value, Box<Response<Body>>> {
            serde_json::from_slice(body)
                .or_else(|_| serde_yaml::from_slice(body))
                .map_err(|e| Box::new(error(400, "BadRequest", &format!("bad body: {e}"))))
        };
        let api_version = target.api_version();
        match (method, target.name.clone(), target.subresource.as_deref()) {
            (Method::GET, None, _) if q.watch => self.watch(target, q),
            (Method::GET, Some(name), None) if q.watch => {
                let q = Query {
                    field_name: Some(name),
                    ..q
                };
                let target = Target {
                    name: None,
                    ..target
                };
                self.watch(target, q)
            }
            (Method::GET, None, _) => self.list(&target, &q),
            (Method::GET, Some(name), _) => {
                let st = lock(&self.state);
                match st
                    .objects
                    .get(&target.resource)
                    .and_then(|m| m.get(&(target.ns(), name.clone())))
                {
                    Some(o) => full(StatusCode::OK, &at_version(o, &api_version)),
                    None => not_found(target.served, &name),
                }
            }
            (Method::POST, None, None) => {
                let mut o = match parse_body() {
                    Ok(o) => o,
                    Err(r) => return *r,
                };
                if let Some(ns) = &target.namespace {
                    o["metadata"]["namespace"] = ns.clone().into();
                }
                self.respond_put(o, Some(true), &api_version)
            }
            (Method::PUT, Some(_), None) => match parse_body() {
                Ok(o) => self.respond_put(o, Some(false), &api_version),
                Err(r) => *r,
            },
            (Method::PATCH, Some(name), sub) => {
                let patch = match parse_body() {
                    Ok(o) => o,
                    Err(r) => return *r,
                };
                self.patch(&target, &name, sub, &q, content_type, patch)
            }
            (Method::DELETE, Some(name), None) => {
                match self.remove(&target.resource, &target.ns(), &name) {
                    Some(o) => full(StatusCode::OK, &at_version(&o, &api_version)),
                    None => not_found(target.served, &name),
                }
            }
            _ => error(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ),
        }
    }

    fn respond_put(&self, o: Value, create: Option<bool>, api_version: &str) -> Response<Body> {
        match self.put(o, create) {
            Ok(stored) => full(StatusCode::OK, &at_version(&stored, api_version)),
            Err((code, message)) => error(code, reason_for(code), &message),
        }
    }

    /// Stores `o`. `create`: `Some(true)` must not exist, `Some(false)` must exist and match
    /// the given resourceVersion, `None` either (test setup).
    fn put(&self, mut o: Value, create: Option<bool>) -> Result<Value, (u16, String)> {
        let (resource, served) = resource_of(&o).map_err(|e| (400, e.to_string()))?;
        if !served.namespaced
            && let Some(m) = o["metadata"].as_object_mut()
        {
            m.remove("namespace");
        }
        let key = ns_name(&o);
        if key.1.is_empty() {
            return Err((
                422,
                "metadata.name: Required value: name is required".into(),
            ));
        }
        let mut st = lock(&self.state);
        if st.uninstalled.contains(&resource) {
            return Err((
                404,
                format!(
                    "the server could not find the requested resource ({})",
                    resource.1
                ),
            ));
        }
        let existing = st.objects.get(&resource).and_then(|m| m.get(&key)).cloned();
        match (create, &existing) {
            (Some(true), Some(_)) => {
                return Err((409, format!("{} \"{}\" already exists", resource.1, key.1)));
            }
            (Some(false), None) => {
                return Err((404, format!("{} \"{}\" not found", resource.1, key.1)));
            }
            (Some(false), Some(e)) => {
                let given = o["metadata"]["resourceVersion"].as_str().unwrap_or("");
                if !given.is_empty()
                    && given != e["metadata"]["resourceVersion"].as_str().unwrap_or("")
                {
                    return Err((409, "the object has been modified; please apply your changes to the latest version and try again".into()));
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
                m.remove("apiVersion");
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

    /// A PATCH: server-side apply (on the object or its status) or a JSON merge patch.
    fn patch(
        &self,
        target: &Target,
        name: &str,
        sub: Option<&str>,
        q: &Query,
        content_type: &str,
        patch: Value,
    ) -> Response<Body> {
        let api_version = target.api_version();
        let media = content_type.split(';').next().unwrap_or("").trim();
        let result = match (media, sub) {
            ("application/apply-patch+yaml", _) if q.field_manager.is_empty() => {
                return error(422, "Invalid", "fieldManager is required for apply patches");
            }
            ("application/apply-patch+yaml", Some("status")) => self.apply_status(
                &target.resource,
                &target.ns(),
                name,
                &q.field_manager,
                q.force,
                patch,
            ),
            ("application/apply-patch+yaml", None) => self.apply_object(target, name, q, patch),
            ("application/merge-patch+json", sub) => {
                self.merge_object(target, name, sub, q, &patch)
            }
            _ => {
                return error(
                    415,
                    "UnsupportedMediaType",
                    &format!(
                        "the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml, application/merge-patch+json (got {content_type:?})"
                    ),
                );
            }
        };
        match result {
            Ok(o) => full(StatusCode::OK, &at_version(&o, &api_version)),
            Err((404, _)) => not_found(target.served, name),
            Err((code, m)) => error(code, reason_for(code), &m),
        }
    }

    /// Server-side apply on an object, simplified: it creates the object, or the fields the
    /// patch gives replace those held (labels and annotations merge), status aside. What
    /// `kubectl apply --server-side` needs; field ownership is tracked for status only.
    fn apply_object(
        &self,
        target: &Target,
        name: &str,
        q: &Query,
        mut patch: Value,
    ) -> Result<Value, (u16, String)> {
        patch["metadata"]["name"] = name.into();
        if let Some(ns) = &target.namespace {
            patch["metadata"]["namespace"] = ns.clone().into();
        }
        let existing = {
            let st = lock(&self.state);
            st.objects
                .get(&target.resource)
                .and_then(|m| m.get(&(target.ns(), name.to_owned())))
                .cloned()
        };
        let merged = match existing {
            None => {
                if let Some(m) = patch.as_object_mut() {
                    m.remove("status");
                }
                patch
            }
            Some(mut o) => {
                for (k, v) in patch.as_object().into_iter().flatten() {
                    match k.as_str() {
                        "status" => {}
                        "metadata" => {
                            for field in ["labels", "annotations"] {
                                if let Some(new) = v[field].as_object() {
                                    for (lk, lv) in new {
                                        o["metadata"][field][lk] = lv.clone();
                                    }
                                }
                            }
                        }
                        _ => o[k] = v.clone(),
                    }
                }
                o
            }
        };
        if q.dry_run {
            return Ok(merged);
        }
        self.put(merged, None)
    }

    fn merge_object(
        &self,
        target: &Target,
        name: &str,
        sub: Option<&str>,
        q: &Query,
        patch: &Value,
    ) -> Result<Value, (u16, String)> {
        let Some(mut o) = lock(&self.state)
            .objects
            .get(&target.resource)
            .and_then(|m| m.get(&(target.ns(), name.to_owned())))
            .cloned()
        else {
            return Err((404, String::new()));
        };
        match sub {
            Some("status") => merge_patch(&mut o["status"], &patch["status"]),
            _ => {
                let status = o.get("status").cloned();
                merge_patch(&mut o, patch);
                match status {
                    Some(s) => o["status"] = s,
                    None => {
                        if let Some(m) = o.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
        }
        if q.dry_run {
            return Ok(o);
        }
        self.put(o, None)
    }

    /// Server-side apply on `status` (see the module docs for the ownership rules).
    fn apply_status(
        &self,
        resource: &Resource,
        ns: &str,
        name: &str,
        manager: &str,
        force: bool,
        patch: Value,
    ) -> Result<Value, (u16, String)> {
        let mut st = lock(&self.state);
        let Some(mut o) = st
            .objects
            .get(resource)
            .and_then(|m| m.get(&(ns.to_owned(), name.to_owned())))
            .cloned()
        else {
            return Err((404, format!("{} \"{name}\" not found", resource.1)));
        };
        st.patches.push(Patch {
            resource: resource.1.clone(),
            namespace: ns.to_owned(),
            name: name.to_owned(),
            field_manager: manager.to_owned(),
            force,
            body: patch.clone(),
        });
        let keyed = resource.0 == "gateway.networking.k8s.io";
        let applied = status_fields(keyed, patch.get("status").unwrap_or(&Value::Null));
        let object_key = (resource.clone(), ns.to_owned(), name.to_owned());
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
            .entry(resource.clone())
            .or_default()
            .insert((ns.to_owned(), name.to_owned()), o.clone());
        self.record(&mut st, rv, resource.clone(), "MODIFIED", o.clone());
        Ok(o)
    }

    fn list(&self, target: &Target, q: &Query) -> Response<Body> {
        use std::ops::Bound;
        let api_version = target.api_version();
        let mut st = lock(&self.state);
        *st.list_pages.entry(target.resource.clone()).or_default() += 1;
        // Pages resume after the last key served, so listing n objects stays O(n).
        let from = q.cont.clone().map_or(Bound::Unbounded, Bound::Excluded);
        let limit = q.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items: Vec<Value> = Vec::new();
        let mut last = None;
        let mut remaining = 0u64;
        let all = st.objects.get(&target.resource);
        for (key, o) in all
            .into_iter()
            .flat_map(|m| m.range((from.clone(), Bound::Unbounded)))
        {
            if !matches(q, target.namespace.as_deref(), o) {
                continue;
            }
            if items.len() == limit {
                remaining += 1;
                continue;
            }
            items.push(at_version(o, &api_version));
            last = Some(key);
        }
        let mut meta = json!({"resourceVersion": st.rv.to_string()});
        if let Some((ns, name)) = last.filter(|_| remaining > 0) {
            meta["continue"] = format!("{ns}/{name}").into();
            meta["remainingItemCount"] = remaining.into();
        }
        full(
            StatusCode::OK,
            &json!({
                "apiVersion": api_version,
                "kind": format!("{}List", target.served.kind),
                "metadata": meta,
                "items": items,
            }),
        )
    }

    fn watch(self: Arc<Self>, target: Target, q: Query) -> Response<Body> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
        // Subscribe before reading history so nothing falls between the two.
        let mut live = self.events.subscribe();
        let mut epoch = self.epoch.subscribe();
        let api_version = target.api_version();
        let kind = target.served.kind;
        let bookmark_version = api_version.clone();
        let line = move |type_: &str, object: &Value| {
            let object = at_version(object, &api_version);
            Bytes::from(format!("{}\n", json!({"type": type_, "object": object})))
        };
        // Clients decode a bookmark as the watched type, so it names it.
        let bookmark = move |rv: u64| json!({"apiVersion": bookmark_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}});
        let (backlog, mut last, gone) = {
            let st = lock(&self.state);
            let from = q.resource_version.unwrap_or(0);
            if from != 0 && from < st.compacted_below {
                (Vec::new(), from, true)
            } else {
                let backlog: Vec<Bytes> = st
                    .history
                    .iter()
                    .filter(|e| e.rv > from && e.resource == target.resource)
                    .filter(|e| matches(&q, target.namespace.as_deref(), &e.object))
                    .map(|e| line(e.kind, &e.object))
                    .collect();
                (backlog, st.rv.max(from), false)
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(q.timeout.unwrap_or(1800));
        tokio::spawn(async move {
            let expired = |from: u64| {
                Bytes::from(format!(
                    "{}\n",
                    json!({"type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {from}"))})
                ))
            };
            if gone {
                let _ = tx.send(expired(last)).await;
                return;
            }
            for b in backlog {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
            if q.bookmarks
                && tx
                    .send(Bytes::from(format!(
                        "{}\n",
                        json!({"type": "BOOKMARK", "object": bookmark(last)})
                    )))
                    .await
                    .is_err()
            {
                return;
            }
            epoch.borrow_and_update();
            loop {
                // Events already committed go out before the watch ends.
                tokio::select! {
                    biased;
                    e = live.recv() => {
                        let e = match e {
                            Ok(e) => e,
                            // Fell behind the broadcast: a real server would also drop us.
                            Err(_) => { let _ = tx.send(expired(last)).await; return; }
                        };
                        if e.kind == "BOOKMARK" {
                            if q.bookmarks {
                                let bm = json!({"type": "BOOKMARK", "object": bookmark(e.rv.max(last))});
                                if tx.send(Bytes::from(format!("{bm}\n"))).await.is_err() { return; }
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
                    _ = tokio::time::sleep_until(deadline) => return,
                    r = epoch.changed() => {
                        if r.is_ok() && epoch.borrow().1 {
                            let _ = tx.send(expired(last)).await;
                        }
                        return;
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
