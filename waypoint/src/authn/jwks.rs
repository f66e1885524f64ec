//! JSON Web Key Sets: inline (`jwks`), fetched (`jwksUri`), or found by OIDC discovery from the
//! issuer when neither is given.
//!
//! A fetched set is shared by every rule and snapshot naming the same source, so a config change
//! does not refetch. A background task refreshes it every 20 minutes and retries every minute
//! after a failure, as istiod does; a token whose `kid` is unknown triggers at most one extra fetch
//! per `min_refetch`. Until a fetch succeeds the set is empty and every token that needs it is
//! rejected: fail closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls::pki_types::{CertificateDer, ServerName};

use crate::metrics::Metrics;

/// A JWKS or discovery document larger than this is refused.
const MAX_BODY: usize = 1 << 20;

/// One usable key.
pub struct Key {
    pub kid: Option<String>,
    /// The key's own `alg`, when the set names one: only that algorithm may use it.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
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
    /// Whether this key may check a token signed with `alg` and naming `kid`.
    pub fn fits(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        if kid.is_some() && self.kid.as_deref() != kid {
            return false;
        }
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        self.key.family() == alg.family()
    }
}

/// Parses a JWKS document. Keys of a type this build cannot use are skipped and reported; a
/// document that is not a key set at all is an error.
pub fn parse(text: &[u8]) -> Result<(Vec<Key>, Vec<String>), String> {
    let doc: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let Some(keys) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Err("JWKS has no \"keys\" array".into());
    };
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let parsed = serde_json::from_value::<Jwk>(k.clone())
            .map_err(|e| e.to_string())
            .and_then(|jwk| {
                let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
                let alg = jwk.common.key_algorithm.and_then(|a| key_algorithm(a).ok());
                Ok(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                })
            });
        match parsed {
            Ok(k) => out.push(k),
            Err(e) => skipped.push(format!("keys[{i}]: {e}")),
        }
    }
    Ok((out, skipped))
}

fn key_algorithm(a: KeyAlgorithm) -> Result<Algorithm, ()> {
    a.to_string().parse().map_err(|_| ())
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
}

#[derive(Debug)]
struct Remote {
    source: Source,
    timeout: Duration,
    fetcher: Arc<Fetcher>,
    min_refetch: Duration,
    /// Serializes fetches and remembers when the last one started.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl KeySet {
    pub fn inline(keys: Vec<Key>) -> KeySet {
        KeySet {
            remote: None,
            keys: ArcSwapOption::from_pointee(keys),
            version: AtomicU64::new(1),
        }
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

    /// Fetches now unless another fetch happened since the caller saw `seen`, or the last one
    /// started less than `min_refetch` ago. Returns whether the keys changed since `seen`.
    pub async fn refetch(&self, seen: u64) -> bool {
        let Some(remote) = &self.remote else {
            return false;
        };
        let mut last = remote.last.lock().await;
        if self.version() != seen {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < remote.min_refetch) {
            return false;
        }
        *last = Some(Instant::now());
        self.fetch(remote).await
    }

    /// The periodic fetch: always runs, whatever the rate limit says.
    async fn scheduled_fetch(&self) -> bool {
        let Some(remote) = &self.remote else {
            return true;
        };
        let mut last = remote.last.lock().await;
        *last = Some(Instant::now());
        self.fetch(remote).await
    }

    async fn fetch(&self, remote: &Remote) -> bool {
        let fetched = tokio::time::timeout(remote.timeout, remote.fetcher.jwks(&remote.source))
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {:?}", remote.timeout)));
        let parsed = fetched.and_then(|body| parse(&body));
        match parsed {
            Ok((keys, skipped)) => {
                if !skipped.is_empty() {
                    tracing::warn!(source = %remote.source, skipped = ?skipped, "JWKS keys skipped");
                }
                tracing::debug!(source = %remote.source, keys = keys.len(), "JWKS fetched");
                remote.fetcher.metrics.jwks_fetches.inc();
                self.keys.store(Some(Arc::new(keys)));
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
                false
            }
        }
    }
}

/// Timing of JWKS fetches; the defaults are istiod's.
#[derive(Debug, Clone)]
pub struct JwksOptions {
    pub refresh: Duration,
    pub retry: Duration,
    /// At most one fetch for an unknown `kid` per this long, per set.
    pub min_refetch: Duration,
    /// Trusted in addition to the system's roots (e.g. a private issuer's CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for JwksOptions {
    fn default() -> Self {
        JwksOptions {
            refresh: Duration::from_secs(20 * 60),
            retry: Duration::from_secs(60),
            min_refetch: Duration::from_secs(10),
            extra_roots: Vec::new(),
        }
    }
}

/// Owns the fetched key sets, shared across snapshots; lives as long as the process.
#[derive(Debug)]
pub struct JwksRegistry {
    opts: JwksOptions,
    fetcher: Arc<Fetcher>,
    /// Where refresh tasks run; `None` means sets are fetched only on demand.
    runtime: Option<tokio::runtime::Handle>,
    sets: Mutex<HashMap<(Source, Duration), Weak<KeySet>>>,
}

impl JwksRegistry {
    pub fn new(
        opts: JwksOptions,
        runtime: Option<tokio::runtime::Handle>,
        metrics: Arc<Metrics>,
    ) -> Arc<JwksRegistry> {
        let fetcher = Arc::new(Fetcher::new(&opts.extra_roots, metrics));
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
        let set = Arc::new(KeySet {
            remote: Some(Remote {
                source,
                timeout,
                fetcher: self.fetcher.clone(),
                min_refetch: self.opts.min_refetch,
                last: tokio::sync::Mutex::new(None),
            }),
            keys: ArcSwapOption::empty(),
            version: AtomicU64::new(0),
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

/// A minimal HTTP/1.1 GET client: one connection per fetch (fetches are minutes apart), no
/// redirects, bounded body.
struct Fetcher {
    /// Built on the first HTTPS fetch: reading the system's roots takes a while and most configs
    /// never need them.
    tls: std::sync::OnceLock<tokio_rustls::TlsConnector>,
    extra_roots: Vec<CertificateDer<'static>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
}

impl Fetcher {
    fn new(extra_roots: &[CertificateDer<'static>], metrics: Arc<Metrics>) -> Fetcher {
        Fetcher {
            tls: std::sync::OnceLock::new(),
            extra_roots: extra_roots.to_vec(),
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
        let tcp = tokio::net::TcpStream::connect((dial_host, port))
            .await
            .map_err(|e| format!("{url}: connect: {e}"))?;
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
            send(url, TokioIo::new(tls), req).await
        } else {
            send(url, TokioIo::new(tcp), req).await
        }
    }
}

async fn send<T>(url: &str, io: T, req: http::Request<Empty<Bytes>>) -> Result<Bytes, String>
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
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{url}: body: {e}"))?
        .to_bytes();
    conn.abort();
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_keys_are_skipped_not_fatal() {
        let doc = br#"{"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "a", "alg": "ES256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "XYZ", "kid": "b"}
        ]}"#;
        let (keys, skipped) = parse(doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
        assert!(keys[0].fits(Algorithm::ES256, Some("a")));
        assert!(!keys[0].fits(Algorithm::ES256, Some("other")));
        assert!(!keys[0].fits(Algorithm::RS256, None));
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(parse(b"{}").is_err());
        assert!(parse(b"not json").is_err());
    }
}
