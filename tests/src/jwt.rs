//! JWT fixtures: real RSA and EC keys made at run time, tokens signed with them, and a JWKS server
//! on loopback (HTTP or HTTPS) that can rotate keys, fail, or answer slowly.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use waypoint::tls::dev_ca::DevCa;

/// A signing key and its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh 2048-bit RSA key for RS256.
    pub fn rsa(kid: &str) -> SigningKey {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key");
        let der = key.to_pkcs1_der().expect("PKCS#1");
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
            }),
        }
    }

    /// A fresh P-256 key for ES256.
    pub fn ec(kid: &str) -> SigningKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
        let point = kp.public_key_raw();
        // Uncompressed SEC1 point: 0x04 || x || y.
        let (x, y) = point[1..].split_at(32);
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
            }),
        }
    }

    /// The same key published differently (no `kid`, `use: enc`, another `alg`...).
    pub fn with_jwk(
        mut self,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> SigningKey {
        if let Value::Object(m) = &mut self.jwk {
            edit(m);
        }
        self
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing")
    }
}

/// `token` with its payload replaced by `claims` and its header and signature kept: what an
/// attacker without the key can send.
pub fn forge(token: &str, claims: &Value) -> String {
    let mut parts = token.split('.');
    let (header, _, signature) = (parts.next(), parts.next(), parts.next());
    format!(
        "{}.{}.{}",
        header.unwrap_or(""),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        signature.unwrap_or("")
    )
}

/// A JWKS document holding `keys`.
pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Claims valid for an hour from now.
pub fn claims(iss: &str, sub: &str, extra: Value) -> Value {
    let mut c = json!({"iss": iss, "sub": sub, "iat": now(), "exp": now() + 3600});
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

#[derive(Debug)]
struct State {
    body: String,
    status: StatusCode,
    delay: Duration,
}

/// Serves a JWKS (and an OIDC discovery document pointing at it) over plain HTTP on loopback.
#[derive(Debug)]
pub struct JwksServer {
    pub addr: SocketAddr,
    scheme: &'static str,
    state: Arc<Mutex<State>>,
    hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(keys: &[&SigningKey]) -> std::io::Result<JwksServer> {
        Self::start_with(keys, None).await
    }

    /// Over HTTPS with a certificate for 127.0.0.1 from a fresh CA; also returns the CA's root.
    pub async fn start_tls(
        keys: &[&SigningKey],
    ) -> anyhow::Result<(JwksServer, CertificateDer<'static>)> {
        use rustls::pki_types::pem::PemObject as _;
        let ca = DevCa::new("jwks-test-ca")?;
        let issued = ca.issue_server(&["127.0.0.1"], Duration::from_secs(3600))?;
        let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let root = CertificateDer::from_pem_slice(ca.root_pem().as_bytes())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Ok((Self::start_with(keys, Some(acceptor)).await?, root))
    }

    async fn start_with(
        keys: &[&SigningKey],
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<JwksServer> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            body: jwks(keys),
            status: StatusCode::OK,
            delay: Duration::ZERO,
        }));
        let hits = Arc::new(AtomicU64::new(0));
        let (st, h) = (state.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (st, h, tls) = (st.clone(), h.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let (st, h) = (st.clone(), h.clone());
                        async move {
                            let (body, status, delay) = {
                                let s = st.lock().unwrap_or_else(|p| p.into_inner());
                                (s.body.clone(), s.status, s.delay)
                            };
                            tokio::time::sleep(delay).await;
                            let body = if req.uri().path() == "/.well-known/openid-configuration" {
                                json!({"issuer": format!("{scheme}://{addr}"), "jwks_uri": format!("{scheme}://{addr}/jwks")})
                                    .to_string()
                            } else {
                                h.fetch_add(1, Ordering::SeqCst);
                                body
                            };
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() = status;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
        Ok(JwksServer {
            addr,
            scheme,
            state,
            hits,
            task,
        })
    }

    /// `http(s)://addr/jwks`.
    pub fn uri(&self) -> String {
        format!("{}://{}/jwks", self.scheme, self.addr)
    }

    /// `http(s)://addr`: an issuer whose discovery document this server answers.
    pub fn issuer(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    fn with(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Serves these keys from now on (a rotation).
    pub fn set_keys(&self, keys: &[&SigningKey]) {
        let body = jwks(keys);
        self.with(|s| s.body = body);
    }

    /// Answers 503 while `down`.
    pub fn set_down(&self, down: bool) {
        self.with(|s| {
            s.status = if down {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        });
    }

    pub fn set_delay(&self, delay: Duration) {
        self.with(|s| s.delay = delay);
    }

    /// JWKS documents served (discovery documents not counted).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
