//! JSON Web Key Sets: inline (`jwks`), fetched (`jwksUri`), or found by OIDC discovery from the
//! issuer when neither is given.
//!
//! A fetched set is shared by every rule and snapshot naming the same source, so a config change
//! does not refetch. A background task refreshes it every 20 minutes and retries every minute
//! after a failure, as istiod does; a token whose `kid` is unknown triggers at most one extra fetch
//! per `min_refetch`. Until a fetch succeeds the set is empty and every token that needs it is
//! rejected: fail closed.
//!
//! What a tenant's rule can make the waypoint do is bounded ([`JwksOptions`]): every connection
//! passes the [`FetchGuard`] (no link-local or metadata address, nor the operator's ranges,
//! checked after DNS on every connect); redirects are not followed; a fetch ends after the
//! rule's `timeout` or `max_fetch_time`, whichever is shorter, and reads at most `max_bytes`.
//! One fetch per set runs at a time, in its own task: requests that need it join it and wait at
//! most `max_wait`, then are answered as if no key matched (401), while the fetch goes on for
//! the next ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::fetch_guard::FetchGuard;
use crate::metrics::Metrics;

/// The algorithms this build verifies (`alg` of a token's header). jwt_verify_lib also does
/// ES512 (P-521), which ring cannot verify: such tokens are refused ("Jwt header [alg] is not
/// supported") and P-521 keys are reported at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    HS256,
    HS384,
    HS512,
    EdDSA,
}

impl Alg {
    pub const ALL: [Alg; 12] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::EdDSA,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The public part of a key, in the form ring verifies with.
#[derive(Clone, PartialEq, Eq)]
#[allow(missing_debug_implementations)] // an HMAC secret is never printed
pub enum Material {
    /// Big-endian modulus and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed SEC1 point on P-256 (`p384: false`) or P-384.
    Ec {
        p384: bool,
        point: Vec<u8>,
    },
    Oct(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// One usable key.
pub struct Key {
    pub kid: Option<String>,
    /// The key's own `alg`, as written: only a token with exactly that `alg` may use it.
    pub alg: Option<String>,
    pub material: Material,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Whether this key is a candidate for a token naming `alg` and `kid`, as jwt_verify_lib's
    /// `verifyJwtWithoutTimeChecking` (src/verify.cc) chooses: a `kid` only rules a key out when
    /// both the token and the key have one and they differ (a key without `kid` is tried for
    /// any token); a key's `alg`, when present, must be the token's.
    pub fn selected(&self, alg: &str, kid: Option<&str>) -> bool {
        if let (Some(want), Some(have)) = (kid, self.kid.as_deref())
            && want != have
        {
            return false;
        }
        self.alg.as_deref().is_none_or(|a| a == alg)
    }

    /// Whether this key's type can check `alg` at all (a selected key of the wrong type simply
    /// fails verification, as in jwt_verify_lib).
    pub fn can_verify(&self, alg: Alg) -> bool {
        matches!(
            (&self.material, alg),
            (
                Material::Rsa { .. },
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512,
            ) | (Material::Ec { p384: false, .. }, Alg::ES256)
                | (Material::Ec { p384: true, .. }, Alg::ES384)
                | (Material::Oct(_), Alg::HS256 | Alg::HS384 | Alg::HS512)
                | (Material::Ed25519(_), Alg::EdDSA)
        )
    }
}

/// A JWKS document read: the keys this build can use, and one line per key it cannot.
#[derive(Debug, Default)]
pub struct Parsed {
    pub keys: Vec<Key>,
    pub unusable: Vec<String>,
}

/// Parses a JWKS document as jwt_verify_lib's `Jwks::createFromJwksCore` (src/jwks.cc) does:
/// a key that cannot be used is left out and the others kept; a document that is not a key set
/// at all is an error. Besides jwt_verify_lib's own checks (an `alg` that does not suit the
/// key type, an EC `crv` that does not suit the `alg`, an RSA exponent other than 3 or 65537),
/// keys ring cannot verify with are reported here rather than failing tokens later: RSA moduli
/// outside 2048..=8192 bits, P-521, OKP curves other than Ed25519. Keys published with
/// `use: enc` are left out too (RFC 7517 §4.2: not for signatures), which jwt_verify_lib does
/// not check.
///
/// The document is read as a stream: one key's JSON tree at a time is held, never the whole
/// document's, so a large set costs its text plus its usable keys.
pub fn parse(text: &[u8]) -> Result<Parsed, String> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let doc = de
        .deserialize_map(DocVisitor)
        .and_then(|doc| de.end().map(|()| doc));
    match doc {
        Ok(Some(parsed)) => Ok(parsed),
        Ok(None) => Err("JWKS has no \"keys\" field".into()),
        Err(e) if e.is_data() => Err(format!("JWKS is not a key set: {e}")),
        Err(e) => Err(format!("JWKS is not JSON: {e}")),
    }
}

/// The top-level object: `keys` parsed (the last one, if repeated, as a JSON object model
/// reads it), every other member skipped.
struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Option<Parsed>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = None;
        while let Some(name) = map.next_key::<String>()? {
            if name == "keys" {
                keys = Some(map.next_value_seed(KeysSeed)?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(keys)
    }
}

struct KeysSeed;

impl<'de> DeserializeSeed<'de> for KeysSeed {
    type Value = Parsed;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for KeysSeed {
    type Value = Parsed;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"keys\" to be an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
        let mut out = Parsed::default();
        let mut i = 0usize;
        while let Some(k) = seq.next_element::<serde_json::Value>()? {
            match key(&k) {
                Ok(key) => out.keys.push(key),
                Err(e) => {
                    let kid = k.get("kid").and_then(|v| v.as_str());
                    out.unusable.push(match kid {
                        Some(kid) => format!("keys[{i}] (kid {kid:?}): {e}"),
                        None => format!("keys[{i}]: {e}"),
                    });
                }
            }
            i += 1;
        }
        Ok(out)
    }
}

/// At most this many unusable keys are logged one by one per load; the rest are summed up, so
/// a set of thousands of junk keys cannot flood the log at every refresh.
const UNUSABLE_LOGGED: usize = 16;

/// Reports what [`parse`] left out: a warning per key (the first few) and the metric.
pub fn report_unusable(source: &dyn std::fmt::Display, unusable: &[String], metrics: &Metrics) {
    for u in unusable.iter().take(UNUSABLE_LOGGED) {
        tracing::warn!(source = %source, "JWKS key unusable, left out: {u}");
    }
    if unusable.len() > UNUSABLE_LOGGED {
        tracing::warn!(
            source = %source,
            more = unusable.len() - UNUSABLE_LOGGED,
            "more JWKS keys unusable, left out"
        );
    }
    metrics.jwks_keys_unusable.inc_by(unusable.len() as u64);
}

/// The unusable keys of a rule's inline `jwks`, for its status message; empty when the rule
/// fetches its keys or they are all usable.
pub fn inline_problems(jwks: Option<&str>) -> Vec<String> {
    match jwks.map(|j| parse(j.as_bytes())) {
        None => Vec::new(),
        Some(Ok(p)) => p.unusable,
        Some(Err(e)) => vec![e],
    }
}

fn key(k: &serde_json::Value) -> Result<Key, String> {
    use base64::Engine as _;
    let field = |name: &str| -> Result<Option<&str>, String> {
        match k.get(name) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("[{name}] is not a string")),
        }
    };
    let required = |name: &str| field(name)?.ok_or_else(|| format!("[{name}] is missing"));
    let b64 = |name: &str| -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(required(name)?.trim_end_matches('='))
            .map_err(|_| format!("[{name}] is not base64url"))
    };
    if !k.is_object() {
        return Err("not a JSON object".into());
    }
    let kty = required("kty")?;
    let kid = field("kid")?.map(str::to_owned);
    let alg = field("alg")?;
    if field("use")? == Some("enc") {
        return Err("\"use\": \"enc\" (an encryption key) never verifies a signature".into());
    }
    let material = match kty {
        "RSA" => {
            // jwt_verify_lib only checks the "RS"/"PS" prefix, so `RSA-OAEP` loads there and is
            // then never selected (no token's alg equals it): refused here, where it is seen.
            if let Some(a) = alg
                && !matches!(a, "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512")
            {
                return Err(format!(
                    "[alg] {a:?} is not a signature algorithm for an RSA key"
                ));
            }
            let n = b64("n")?;
            let e = b64("e")?;
            let n = &n[n.iter().take_while(|b| **b == 0).count()..];
            let e = &e[e.iter().take_while(|b| **b == 0).count()..];
            if e != [3] && e != [1, 0, 1] {
                return Err("RSA exponent is neither 3 nor 65537".into());
            }
            let bits =
                (n.len() * 8).saturating_sub(n.first().map_or(0, |b| b.leading_zeros() as usize));
            if !(2048..=8192).contains(&bits) {
                return Err(format!(
                    "RSA-{bits}: only 2048 to 8192 bit RSA keys are supported"
                ));
            }
            Material::Rsa {
                n: n.to_vec(),
                e: e.to_vec(),
            }
        }
        "EC" => {
            if let Some(a) = alg
                && !a.starts_with("ES")
            {
                return Err(format!("[alg] {a:?} is not ES* for an EC key"));
            }
            let crv = field("crv")?;
            let p384 = match (alg, crv) {
                (Some("ES256") | None, Some("P-256")) | (Some("ES256"), None) | (None, None) => {
                    false
                }
                (Some("ES384") | None, Some("P-384")) | (Some("ES384"), None) => true,
                (Some("ES512") | None, Some("P-521")) | (Some("ES512"), None) => {
                    return Err("P-521 (ES512) keys are not supported".into());
                }
                (Some(a), Some(c)) if matches!(c, "P-256" | "P-384" | "P-521") => {
                    return Err(format!("[crv] {c} does not suit [alg] {a}"));
                }
                _ => return Err(format!("[crv] {crv:?} / [alg] {alg:?} is not supported")),
            };
            let (x, y) = (b64("x")?, b64("y")?);
            let len = if p384 { 48 } else { 32 };
            if x.len() != len || y.len() != len {
                return Err("[x] or [y] has the wrong length for the curve".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Material::Ec { p384, point }
        }
        "oct" => {
            if alg.is_some_and(|a| !matches!(a, "HS256" | "HS384" | "HS512")) {
                return Err(format!("[alg] {alg:?} is not HS256, HS384 or HS512"));
            }
            let k = b64("k")?;
            if k.is_empty() {
                return Err("[k] is empty".into());
            }
            Material::Oct(k)
        }
        "OKP" => {
            if alg.is_some_and(|a| a != "EdDSA") {
                return Err(format!("[alg] {alg:?} is not EdDSA for an OKP key"));
            }
            match field("crv")? {
                Some("Ed25519") => {}
                Some(c) => return Err(format!("OKP curve {c} is not supported")),
                None => return Err("[crv] is missing".into()),
            }
            let x = b64("x")?;
            if x.len() != 32 {
                return Err("[x] is not 32 bytes".into());
            }
            Material::Ed25519(x)
        }
        other => return Err(format!("[kty] {other:?} is not supported")),
    };
    Ok(Key {
        kid,
        alg: alg.map(str::to_owned),
        material,
    })
}

/// Where a set's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Uri(String),
    /// `<issuer>/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Uri(u) => f.write_str(u),
            Source::Discovery(iss) => write!(f, "OIDC discovery for {iss}"),
        }
    }
}

/// The keys a rule verifies with.
#[derive(Debug)]
pub struct KeySet {
    /// `None` for inline keys.
    remote: Option<Remote>,
    keys: ArcSwapOption<Vec<Key>>,
    /// Bumped on every successful fetch: lets a waiter see that someone else already refetched.
    version: AtomicU64,
    /// Why the last fetch failed; cleared by a successful one.
    last_error: ArcSwapOption<String>,
}

/// What a fetched set holds now, for `/config_dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Usable keys held; `None` until a fetch succeeded.
    pub keys: Option<usize>,
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Remote {
    source: Source,
    /// The rule's `timeout`, capped by [`JwksOptions::max_fetch_time`].
    fetch_timeout: Duration,
    /// How long a request waits for a fetch ([`JwksOptions::max_wait`]); a fetch that ends
    /// sooner, by its own timeout or not, ends the wait.
    wait: Duration,
    fetcher: Arc<Fetcher>,
    min_refetch: Duration,
    /// Where fetches run; the caller's runtime when `None`.
    runtime: Option<tokio::runtime::Handle>,
    flight: Mutex<Flight>,
    /// Changes whenever a fetch ends, successful or not.
    done: tokio::sync::watch::Sender<Done>,
}

/// Whether a fetch is running and when the last ones started.
#[derive(Debug, Default)]
struct Flight {
    running: bool,
    /// The last fetch of any kind.
    last_start: Option<Instant>,
    /// The last fetch for a token whose `kid` the keys held lack.
    last_unknown_kid: Option<Instant>,
}

/// Why a fetch is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The schedule: always.
    Scheduled,
    /// No keys yet: at most once per `min_refetch` after any fetch.
    NoKeys,
    /// A `kid` the keys held lack: at most once per `min_refetch` after the last such fetch,
    /// so that a rotation right after a scheduled fetch is still picked up.
    UnknownKid,
}

/// The outcome of the latest fetch.
#[derive(Debug, Default, Clone, Copy)]
struct Done {
    ok: bool,
}

/// A fetch in flight: when dropped (finished, failed, or its task cancelled), the set may fetch
/// again and everyone waiting hears of it.
struct InFlight {
    set: Arc<KeySet>,
    ok: std::sync::atomic::AtomicBool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(r) = &self.set.remote {
            r.flight.lock().unwrap_or_else(|p| p.into_inner()).running = false;
            let ok = self.ok.load(Ordering::Acquire);
            r.done.send_modify(|d| d.ok = ok);
        }
    }
}

impl KeySet {
    pub fn inline(keys: Vec<Key>) -> KeySet {
        KeySet {
            remote: None,
            keys: ArcSwapOption::from_pointee(keys),
            version: AtomicU64::new(1),
            last_error: ArcSwapOption::empty(),
        }
    }

    /// For a fetched set, what it holds and how the last fetch went; `None` for inline keys.
    pub fn fetched(&self) -> Option<Fetched> {
        self.remote.as_ref()?;
        Some(Fetched {
            keys: self.current().map(|k| k.len()),
            last_error: self.last_error.load_full().map(|e| (*e).clone()),
        })
    }

    /// The keys, or `None` when they were never fetched.
    pub fn current(&self) -> Option<Arc<Vec<Key>>> {
        self.keys.load_full()
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn source(&self) -> Option<&Source> {
        self.remote.as_ref().map(|r| &r.source)
    }

    /// For a request whose token found no key in the version `seen`: joins the fetch in flight,
    /// or starts one unless the last started less than `min_refetch` ago, and waits for it at
    /// most the set's wait bound. Returns whether the keys changed since `seen`.
    pub async fn refetch(self: &Arc<Self>, seen: u64) -> bool {
        let Some(remote) = &self.remote else {
            return false;
        };
        // Subscribed before looking, so a fetch that ends in between is not missed.
        let mut done = remote.done.subscribe();
        if self.version() != seen {
            return true;
        }
        let want = if self.keys.load().is_some() {
            Want::UnknownKid
        } else {
            Want::NoKeys
        };
        if !self.start(want) {
            return false;
        }
        if tokio::time::timeout(remote.wait, done.changed())
            .await
            .is_err()
        {
            tracing::debug!(source = %remote.source, wait = ?remote.wait, "JWKS fetch still running; request answered without it");
        }
        self.version() != seen
    }

    /// The periodic fetch: starts one whatever the rate limit says (or joins the one running)
    /// and waits for its outcome, which the fetch's own timeout bounds.
    async fn scheduled_fetch(self: &Arc<Self>) -> bool {
        let Some(remote) = &self.remote else {
            return true;
        };
        let mut done = remote.done.subscribe();
        self.start(Want::Scheduled);
        // The sender lives in `self`, which this holds: `changed` cannot fail.
        let _ = done.changed().await;
        done.borrow().ok
    }

    /// Starts a fetch in its own task unless one is running or `want` is rate-limited. Returns
    /// whether a fetch is running now.
    fn start(self: &Arc<Self>, want: Want) -> bool {
        let Some(remote) = &self.remote else {
            return false;
        };
        {
            let mut f = remote.flight.lock().unwrap_or_else(|p| p.into_inner());
            if f.running {
                return true;
            }
            let recent = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() < remote.min_refetch);
            let limited = match want {
                Want::Scheduled => false,
                Want::NoKeys => recent(f.last_start),
                Want::UnknownKid => recent(f.last_unknown_kid),
            };
            if limited {
                return false;
            }
            let now = Instant::now();
            f.running = true;
            f.last_start = Some(now);
            if want == Want::UnknownKid {
                f.last_unknown_kid = Some(now);
            }
        }
        // Made before the task, so that a task that never runs (its runtime shutting down)
        // still ends the flight when it is dropped.
        let flight = InFlight {
            set: self.clone(),
            ok: std::sync::atomic::AtomicBool::new(false),
        };
        let job = async move {
            let ok = flight.set.fetch().await;
            flight.ok.store(ok, Ordering::Release);
        };
        match remote
            .runtime
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        {
            Some(rt) => drop(rt.spawn(job)),
            None => drop(job),
        }
        true
    }

    async fn fetch(&self) -> bool {
        let Some(remote) = &self.remote else {
            return true;
        };
        let fetched =
            tokio::time::timeout(remote.fetch_timeout, remote.fetcher.jwks(&remote.source))
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {:?}", remote.fetch_timeout)));
        let parsed = fetched.and_then(|body| parse(&body));
        match parsed {
            Ok(Parsed { keys, unusable }) => {
                report_unusable(&remote.source, &unusable, &remote.fetcher.metrics);
                tracing::debug!(source = %remote.source, keys = keys.len(), "JWKS fetched");
                remote.fetcher.metrics.jwks_fetches.inc();
                self.keys.store(Some(Arc::new(keys)));
                self.last_error.store(None);
                self.version.fetch_add(1, Ordering::AcqRel);
                true
            }
            Err(e) => {
                remote.fetcher.metrics.jwks_fetch_failures.inc();
                let have = self.keys.load().is_some();
                tracing::warn!(
                    source = %remote.source,
                    error = %e,
                    keeping_previous_keys = have,
                    "JWKS fetch failed"
                );
                self.last_error.store(Some(Arc::new(e)));
                false
            }
        }
    }
}

/// Timing, limits and reach of JWKS fetches. `refresh` and `retry` are istiod's; the bounds
/// are ours (istiod has none but the rule's `timeout`), each a flag of `waypoint run`.
#[derive(Debug, Clone)]
pub struct JwksOptions {
    pub refresh: Duration,
    pub retry: Duration,
    /// At most one fetch for an unknown `kid` per this long, per set.
    pub min_refetch: Duration,
    /// Trusted in addition to the system's roots (e.g. a private issuer's CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// The longest one fetch (discovery document and keys, connect to last byte) may take,
    /// whatever a rule's `timeout` says.
    pub max_fetch_time: Duration,
    /// The longest a request waits for a fetch in flight (the fetch's own timeout may end it
    /// sooner); then it is answered as with no key.
    pub max_wait: Duration,
    /// The largest JWKS or discovery document read; a larger one fails the fetch.
    pub max_bytes: usize,
    /// Ranges no fetch may connect to, besides link-local and metadata addresses (istiod's
    /// `BLOCKED_CIDRS_IN_JWKS_URIS`).
    pub blocked: Vec<IpNet>,
}

/// Istio's default `timeout`: the longest Envoy's remote-JWKS mode holds a request for a fetch
/// under a rule that sets none.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(5);
/// Twice Istio's default `timeout`.
pub const DEFAULT_MAX_FETCH_TIME: Duration = Duration::from_secs(10);
/// 16 MiB: a set of some 35,000 RSA-2048 keys. Istio sets no limit of its own (istiod reads the
/// whole body, and the xDS stream that carries it inline to Envoy takes messages up to 2 GiB);
/// real sets hold a handful of keys.
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;

impl Default for JwksOptions {
    fn default() -> Self {
        JwksOptions {
            refresh: Duration::from_secs(20 * 60),
            retry: Duration::from_secs(60),
            min_refetch: Duration::from_secs(10),
            extra_roots: Vec::new(),
            max_fetch_time: DEFAULT_MAX_FETCH_TIME,
            max_wait: DEFAULT_MAX_WAIT,
            max_bytes: DEFAULT_MAX_BYTES,
            blocked: Vec::new(),
        }
    }
}

/// Owns the fetched key sets, shared across snapshots; lives as long as the process.
#[derive(Debug)]
pub struct JwksRegistry {
    opts: JwksOptions,
    fetcher: Arc<Fetcher>,
    /// Where refresh tasks and fetches run; `None` means sets are fetched only on demand, on
    /// the caller's runtime.
    runtime: Option<tokio::runtime::Handle>,
    sets: Mutex<HashMap<(Source, Duration), Weak<KeySet>>>,
}

impl JwksRegistry {
    pub fn new(
        opts: JwksOptions,
        runtime: Option<tokio::runtime::Handle>,
        metrics: Arc<Metrics>,
    ) -> Arc<JwksRegistry> {
        let fetcher = Arc::new(Fetcher::new(&opts, metrics));
        Arc::new(JwksRegistry {
            opts,
            fetcher,
            runtime,
            sets: Mutex::default(),
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.fetcher.metrics.clone()
    }

    /// The shared set for `source`, starting its refresh task on first use. A set nobody holds
    /// any more stops refreshing at its next tick.
    pub fn remote(&self, source: Source, timeout: Duration) -> Arc<KeySet> {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.retain(|_, w| w.strong_count() > 0);
        let key = (source.clone(), timeout);
        if let Some(set) = sets.get(&key).and_then(Weak::upgrade) {
            return set;
        }
        let fetch_timeout = timeout.min(self.opts.max_fetch_time);
        if fetch_timeout < timeout {
            tracing::info!(
                source = %source,
                timeout = ?timeout,
                max = ?fetch_timeout,
                "jwtRule timeout above the fetch ceiling (--jwks-max-fetch-seconds); fetches stop at the ceiling"
            );
        }
        let set = Arc::new(KeySet {
            remote: Some(Remote {
                source,
                fetch_timeout,
                wait: self.opts.max_wait,
                fetcher: self.fetcher.clone(),
                min_refetch: self.opts.min_refetch,
                runtime: self.runtime.clone(),
                flight: Mutex::default(),
                done: tokio::sync::watch::Sender::new(Done::default()),
            }),
            keys: ArcSwapOption::empty(),
            version: AtomicU64::new(0),
            last_error: ArcSwapOption::empty(),
        });
        sets.insert(key, Arc::downgrade(&set));
        if let Some(rt) = &self.runtime {
            let weak = Arc::downgrade(&set);
            let (refresh, retry) = (self.opts.refresh, self.opts.retry);
            rt.spawn(async move {
                loop {
                    let Some(set) = weak.upgrade() else {
                        return;
                    };
                    let ok = set.scheduled_fetch().await;
                    drop(set);
                    tokio::time::sleep(if ok { refresh } else { retry }).await;
                }
            });
        }
        set
    }
}

/// A minimal HTTP/1.1 GET client: one connection per fetch (fetches are minutes apart), only
/// to addresses the [`FetchGuard`] allows, no redirects, bounded body.
struct Fetcher {
    /// Built on the first HTTPS fetch: reading the system's roots takes a while and most configs
    /// never need them.
    tls: std::sync::OnceLock<tokio_rustls::TlsConnector>,
    extra_roots: Vec<CertificateDer<'static>>,
    guard: FetchGuard,
    max_bytes: usize,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
}

impl Fetcher {
    fn new(opts: &JwksOptions, metrics: Arc<Metrics>) -> Fetcher {
        Fetcher {
            tls: std::sync::OnceLock::new(),
            extra_roots: opts.extra_roots.clone(),
            guard: FetchGuard::new(opts.blocked.clone()),
            max_bytes: opts.max_bytes,
            metrics,
        }
    }

    fn tls(&self) -> &tokio_rustls::TlsConnector {
        self.tls.get_or_init(|| Self::connector(&self.extra_roots))
    }

    fn connector(extra_roots: &[CertificateDer<'static>]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "system root certificates partly unreadable");
        }
        roots.add_parsable_certificates(native.certs);
        roots.add_parsable_certificates(extra_roots.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    async fn jwks(&self, source: &Source) -> Result<Bytes, String> {
        match source {
            Source::Uri(u) => self.get(u).await,
            Source::Discovery(issuer) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc = self.get(&url).await?;
                let doc: serde_json::Value = serde_json::from_slice(&doc)
                    .map_err(|e| format!("{url}: discovery document is not JSON: {e}"))?;
                let Some(jwks) = doc.get("jwks_uri").and_then(|u| u.as_str()) else {
                    return Err(format!("{url}: discovery document has no jwks_uri"));
                };
                self.get(jwks).await
            }
        }
    }

    async fn get(&self, url: &str) -> Result<Bytes, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url}: only http and https are supported")),
        };
        let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        // IPv6 literals come bracketed in URIs.
        let dial_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = self
            .guard
            .connect(dial_host, port)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let authority = uri
            .authority()
            .map_or_else(|| host.to_owned(), |a| a.as_str().to_owned());
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let req = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "rust-waypoint")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("{url}: {e}"))?;
        if https {
            let name = ServerName::try_from(dial_host.to_owned())
                .map_err(|e| format!("{url}: server name: {e}"))?;
            let tls = self
                .tls()
                .connect(name, tcp)
                .await
                .map_err(|e| format!("{url}: TLS: {e}"))?;
            send(url, TokioIo::new(tls), req, self.max_bytes).await
        } else {
            send(url, TokioIo::new(tcp), req, self.max_bytes).await
        }
    }
}

async fn send<T>(
    url: &str,
    io: T,
    req: http::Request<Empty<Bytes>>,
    max_bytes: usize,
) -> Result<Bytes, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    // Refused before reading a byte of the body: a redirect (never followed, whatever it
    // points at) or an error.
    if !status.is_success() {
        conn.abort();
        return Err(format!("{url}: HTTP {status}"));
    }
    let body = Limited::new(resp.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("{url}: body larger than {max_bytes} bytes (--jwks-max-bytes)")
            } else {
                format!("{url}: body: {e}")
            }
        })?
        .to_bytes();
    conn.abort();
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const P256_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    #[test]
    fn unusable_keys_are_reported_not_fatal() {
        let p521 = "A".repeat(88);
        let small_n = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            [0xC5u8; 128],
        );
        let doc = format!(
            r#"{{"keys": [
            {{"kty": "EC", "crv": "P-256", "kid": "a", "alg": "ES256", "x": "{P256_X}", "y": "{P256_Y}"}},
            {{"kty": "XYZ", "kid": "b"}},
            {{"kty": "EC", "crv": "P-521", "kid": "c", "x": "{p521}", "y": "{p521}"}},
            {{"kty": "RSA", "kid": "d", "n": "{small_n}", "e": "AQAB"}},
            {{"kty": "EC", "crv": "P-256", "kid": "e", "use": "enc", "x": "{P256_X}", "y": "{P256_Y}"}},
            {{"kty": "RSA", "kid": "f", "alg": "RSA-OAEP", "n": "{small_n}", "e": "AQAB"}},
            {{"kty": "EC", "crv": "P-384", "alg": "ES256", "x": "{P256_X}", "y": "{P256_Y}"}},
            "not a key"
        ]}}"#
        );
        let p = parse(doc.as_bytes()).unwrap();
        assert_eq!(p.keys.len(), 1);
        assert_eq!(p.keys[0].kid.as_deref(), Some("a"));
        let u = p.unusable.join("\n");
        for want in [
            "keys[1] (kid \"b\"): [kty] \"XYZ\" is not supported",
            "keys[2] (kid \"c\"): P-521",
            "keys[3] (kid \"d\"): RSA-1024",
            "keys[4] (kid \"e\"): \"use\": \"enc\"",
            "keys[5] (kid \"f\"): [alg] \"RSA-OAEP\" is not a signature algorithm",
            "keys[6]: [crv] P-384 does not suit [alg] ES256",
            "keys[7]: not a JSON object",
        ] {
            assert!(u.contains(want), "{want} missing from\n{u}");
        }
        assert!(parse(b"{}").is_err());
        assert!(parse(br#"{"keys": {}}"#).is_err());
        assert!(parse(b"not json").is_err());
    }

    #[test]
    fn documents_that_are_no_key_set() {
        let err = |doc: &str| parse(doc.as_bytes()).err().unwrap_or_default();
        assert!(err("[]").starts_with("JWKS is not a key set: invalid type: sequence"));
        assert!(err(r#"{"keys": {}}"#).contains("expected \"keys\" to be an array"));
        assert!(err(r#"{"keys": null}"#).contains("expected \"keys\" to be an array"));
        assert_eq!(err(r#"{"other": []}"#), "JWKS has no \"keys\" field");
        assert!(err(r#"{"keys": []} trailing"#).starts_with("JWKS is not JSON"));
        assert!(err(r#"{"keys": [}"#).starts_with("JWKS is not JSON"));
        assert!(err("").starts_with("JWKS is not JSON"));
        // Other members are skipped whatever they hold; a repeated `keys` counts once, the last.
        let doc = format!(
            r#"{{"keys": [{{"kty": "EC", "crv": "P-256", "kid": "a", "x": "{P256_X}", "y": "{P256_Y}"}}],
                "nested": {{"keys": 1, "deep": [[[]]]}},
                "keys": [{{"kty": "EC", "crv": "P-256", "kid": "b", "x": "{P256_X}", "y": "{P256_Y}"}}]}}"#
        );
        let p = parse(doc.as_bytes()).unwrap();
        assert_eq!(p.keys.len(), 1);
        assert_eq!(p.keys[0].kid.as_deref(), Some("b"));
        // Nesting past serde_json's recursion limit is an error, not a stack overflow.
        let deep = format!(r#"{{"x": {}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn selection_as_jwt_verify_lib() {
        let k = |kid: Option<&str>, alg: Option<&str>| Key {
            kid: kid.map(Into::into),
            alg: alg.map(Into::into),
            material: Material::Oct(vec![1]),
        };
        assert!(k(Some("a"), None).selected("HS256", Some("a")));
        assert!(!k(Some("a"), None).selected("HS256", Some("b")));
        assert!(
            k(Some("a"), None).selected("HS256", None),
            "a token without kid tries all"
        );
        assert!(
            k(None, None).selected("HS256", Some("b")),
            "a key without kid fits any"
        );
        assert!(!k(None, Some("HS384")).selected("HS256", None));
        assert!(k(None, Some("HS256")).can_verify(Alg::HS256));
        assert!(!k(None, None).can_verify(Alg::RS256));
    }
}
