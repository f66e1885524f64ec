//! `waypoint authz eval`: one decision per request document, at the waypoint and at the
//! destination's ztunnel (the second enforcement point, see [`two_hop`]).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use gateway_api_bindings::destinations::Destinations;
use gateway_api_bindings::waypoint::{Attachment, Target, attachment};
use gateway_api_bindings::{
    ObjectKey, Store, WaypointIdentity, authorizer_for, service_entry_target, service_target,
};
use policy_engine::path::PathNormalization;
use policy_engine::request::DEFAULT_SPACE_DELIMITED_CLAIMS;
use policy_engine::{Authorizer, JwtClaims, PeerIdentity};

use gateway_api_bindings::limits::{shown, shown_max};
use gateway_api_bindings::ztunnel;
use serde::Deserialize;
use waypoint::authn::jwks::{JwksOptions, JwksRegistry};
use waypoint::authn::provider::{Verified, claim};
use waypoint::authn::{Authenticator, Authn, AuthnError};
use waypoint::proxy::policy::{self, Connection, Inputs, Token};
use waypoint::proxy::request::{Incoming, RequestView};

use crate::cli::output::{Colour, Format, Painter};

mod two_hop;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NsName {
    namespace: String,
    name: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Destination {
    service: Option<NsName>,
    /// The pod the connection reaches (else the pod with `ip`, else the Service's pods).
    workload: Option<NsName>,
    ip: Option<IpAddr>,
    port: Option<u16>,
}

/// How the request reached the destination's ztunnel.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Via {
    /// Through the request's waypoint: ztunnel sees the waypoint's identity and address.
    #[default]
    Waypoint,
    /// Straight to the pod: ztunnel sees the caller.
    Direct,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Source {
    principal: Option<String>,
    ip: Option<IpAddr>,
    remote_ip: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Http {
    method: String,
    /// The `Host` header, when not given in `headers`.
    #[serde(default)]
    host: String,
    /// The request-target as on the request line: origin-form (`/p?q`), absolute-form
    /// (`http://a/p`), `*` or authority-form.
    path: String,
    /// Header fields; a list for a name sent more than once, in arrival order.
    #[serde(default)]
    headers: BTreeMap<String, FieldValues>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FieldValues {
    One(String),
    Many(Vec<String>),
}

impl FieldValues {
    fn iter(&self) -> impl Iterator<Item = &String> {
        match self {
            FieldValues::One(v) => std::slice::from_ref(v).iter(),
            FieldValues::Many(vs) => vs.iter(),
        }
    }
}

/// The header fields of a request document, as the waypoint's codec would hold them.
fn header_map(http: &Http, token: Option<&str>) -> anyhow::Result<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for (name, values) in &http.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("http.headers: {name:?} is not a header name"))?;
        for v in values.iter() {
            let value = http::HeaderValue::from_str(v)
                .with_context(|| format!("http.headers.{name}: {v:?} is not a field value"))?;
            map.append(name.clone(), value);
        }
    }
    if !http.host.is_empty() && !map.contains_key(http::header::HOST) {
        let host = http::HeaderValue::from_str(&http.host)
            .with_context(|| format!("http.host: {:?} is not a field value", http.host))?;
        map.insert(http::header::HOST, host);
    }
    if let Some(t) = token {
        let bearer = http::HeaderValue::from_str(&format!("Bearer {t}"))
            .context("token: not a header value")?;
        map.insert(http::header::AUTHORIZATION, bearer);
    }
    Ok(map)
}

/// The document's request as the waypoint's codec hands it to [`RequestView::build`].
fn incoming<'a>(http: &'a Http, headers: &'a http::HeaderMap) -> Incoming<'a> {
    Incoming {
        method: &http.method,
        target: http.path.as_bytes(),
        h2_authority: None,
        h2_scheme: None,
        http2: false,
        headers,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Jwt {
    claims: serde_json::Map<String, serde_json::Value>,
}

/// One answer; field order is the documented one.
#[derive(Debug, serde::Serialize)]
struct Line {
    decision: &'static str,
    status: Option<u16>,
    policy: Option<String>,
    rule: Option<usize>,
    action: Option<&'static str>,
    reason: String,
    /// The destination's ztunnel on the same request; absent when no decision exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    ztunnel: Option<two_hop::ZtunnelAnswer>,
}

impl Line {
    /// An object the waypoint refuses: the config is not evaluated.
    fn refused(reason: String) -> Line {
        Line {
            decision: "error",
            status: None,
            policy: None,
            rule: None,
            action: None,
            reason: format!("config refused: {reason}"),
            ztunnel: None,
        }
    }

    /// A request answered before policy (400 from path normalization, 401 from a token).
    fn local(status: u16, reason: String) -> Line {
        Line {
            decision: "deny",
            status: Some(status),
            policy: None,
            rule: None,
            action: None,
            reason,
            ztunnel: None,
        }
    }
}

/// One request document (the format is documented in `docs/authz-eval.md`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalRequest {
    waypoint: NsName,
    #[serde(default)]
    destination: Destination,
    #[serde(default)]
    source: Source,
    http: Option<Http>,
    jwt: Option<Jwt>,
    /// A raw JWT, validated against the config's RequestAuthentications as the waypoint would
    /// (sent as `Authorization: Bearer`).
    token: Option<String>,
    sni: Option<String>,
    /// `waypoint` (default) or `direct`: what the destination's ztunnel sees as the caller.
    #[serde(default)]
    via: Via,
}

pub(crate) fn run(
    config: &Path,
    requests: &Path,
    root_ns: &str,
    normalization: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let mode = PathNormalization::parse(normalization)
        .with_context(|| format!("unknown --path-normalization {normalization:?}"))?;
    let (store, errors) = super::load(config)?;
    // The waypoint refuses a config holding an object it cannot read or a policy Istio's webhook
    // would reject, and keeps serving its previous one: no decision exists for this config.
    let mut refused: Vec<String> = errors.iter().map(ToString::to_string).collect();
    refused.extend(waypoint::state::invalid_policies(&store, root_ns));
    if !refused.is_empty() {
        let lines: Vec<(String, Line)> = refused
            .into_iter()
            .map(|r| ("config".to_owned(), Line::refused(r)))
            .collect();
        print(&lines, format)?;
        return Ok(ExitCode::FAILURE);
    }
    let text = std::fs::read_to_string(requests)
        .with_context(|| format!("reading {}", requests.display()))?;
    let mut authorizers: HashMap<(String, String), Compiled> = HashMap::new();
    // Remote JWKS are fetched on first use, with the rule's timeout; nothing refreshes. Offline,
    // a request waits for the whole fetch rather than being answered without it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for JWKS fetches")?;
    let opts = JwksOptions::default();
    let opts = JwksOptions {
        max_wait: opts.max_fetch_time,
        ..opts
    };
    let jwks = JwksRegistry::new(opts, None, Default::default());
    let ztunnel_policies = ztunnel::policies(&store, root_ns);
    let mut out = std::io::stdout().lock();
    let mut answers = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value: serde_yaml::Value = Deserialize::deserialize(doc).with_context(|| {
            format!(
                "{}: request {} is not valid YAML",
                requests.display(),
                i + 1
            )
        })?;
        if value.is_null() {
            continue;
        }
        let req: EvalRequest = serde_path_to_error::deserialize(value)
            .with_context(|| format!("{}: request {}", requests.display(), i + 1))?;
        let wp_key = (req.waypoint.namespace.clone(), req.waypoint.name.clone());
        let compiled = authorizers.entry(wp_key).or_insert_with(|| {
            let gw = ObjectKey::new(&req.waypoint.namespace, &req.waypoint.name);
            if !store.gateways.contains_key(&gw) {
                tracing::warn!(waypoint = %gw, "no such Gateway in the config: assuming class istio-waypoint");
            }
            let wp = WaypointIdentity::from_store(&store, gw, root_ns);
            Compiled {
                authorizer: authorizer_for(&store, &wp),
                authn: Authn::compile(&store, &wp, &jwks),
                // The cluster's trust domain does not matter here: only targets are read.
                destinations: Destinations::build(&store, &wp.gateway, "cluster.local"),
                waypoint: wp,
            }
        });
        let mut line = decide(&store, compiled, &rt, &req, mode)
            .with_context(|| format!("{}: request {}", requests.display(), i + 1))?;
        line.ztunnel = Some(two_hop::answer(&store, &ztunnel_policies, &req));
        if format == Format::Json {
            // Streamed: a long request file shows progress, and a later bad document still
            // leaves the answers before it.
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        } else {
            answers.push((describe(i, &req), line));
        }
    }
    drop(out);
    print(&answers, format)?;
    Ok(ExitCode::SUCCESS)
}

/// What one waypoint of the config compiles to.
struct Compiled {
    waypoint: WaypointIdentity,
    authorizer: Authorizer,
    authn: Authn,
    destinations: Destinations,
}

/// The engine target of the request's destination, as the waypoint finds it; `Err` with the
/// reason when the config holds the named Service or ServiceEntry and the waypoint does not
/// serve it (the cluster would send it no such traffic, and the waypoint answers a CONNECT for
/// it with 503).
///
/// * `service` named: that Service (else ServiceEntry) of the config, if the waypoint serves it
///   ([`attachment`], the data path's rule). One the config does not hold is taken by name, so
///   a config of policies alone can still be evaluated.
/// * else `ip` and `port`: the owner of that address among the destinations the waypoint
///   serves (one owner per address, as on the data path); none: the waypoint's own policies.
fn target_of(store: &Store, c: &Compiled, d: &Destination) -> Result<Option<String>, String> {
    let gw = &c.waypoint.gateway;
    let Some(s) = &d.service else {
        let addr =
            d.ip.zip(d.port)
                .map(|(ip, port)| std::net::SocketAddr::new(ip, port));
        return Ok(addr
            .and_then(|a| c.destinations.services.get(&a))
            .map(|dest| dest.target.clone()));
    };
    let key = ObjectKey::new(&s.namespace, &s.name);
    let (kind, target, att): (&str, String, Attachment) =
        if let Some(svc) = store.services.get(&key) {
            (
                "Service",
                service_target(&key),
                attachment(store, Target::Service(&svc.object)),
            )
        } else if let Some(se) = store.service_entries.get(&key) {
            (
                "ServiceEntry",
                service_entry_target(&key),
                attachment(store, Target::ServiceEntry(&se.object)),
            )
        } else {
            return Ok(Some(service_target(&key)));
        };
    if att.serves(gw) {
        return Ok(Some(target));
    }
    let why = match (att.refusal_for(gw), att.waypoint()) {
        (Some(r), _) => r.to_string(),
        (None, Some(other)) => format!("it uses waypoint {other}"),
        (None, None) => match att.refusals().next() {
            Some(r) => r.to_string(),
            None => "it uses no waypoint".to_owned(),
        },
    };
    Err(format!(
        "{kind} {key} is not served by waypoint {gw}: {why}"
    ))
}

/// A request in one line, for the text table's heading.
fn describe(i: usize, req: &EvalRequest) -> String {
    let what = match &req.http {
        Some(h) => format!("{} {}", h.method, h.path),
        None => "TCP".to_owned(),
    };
    let to = match (&req.destination.service, req.destination.port) {
        (Some(s), Some(p)) => format!(" to {}/{}:{p}", s.namespace, s.name),
        (Some(s), None) => format!(" to {}/{}", s.namespace, s.name),
        (None, _) => String::new(),
    };
    let from = req.source.principal.as_deref().map_or_else(
        || " from an unauthenticated peer".to_owned(),
        |p| format!(" from {p}"),
    );
    let via = match req.via {
        Via::Waypoint => format!(" via {}/{}", req.waypoint.namespace, req.waypoint.name),
        Via::Direct => " direct".to_owned(),
    };
    format!("request {}: {what}{to}{from}{via}", i + 1)
}

/// Text (a table per request), YAML (one list) or JSON (one line per answer).
fn print(answers: &[(String, Line)], format: Format) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            for (_, l) in answers {
                writeln!(out, "{}", serde_json::to_string(l)?)?;
            }
        }
        Format::Yaml => {
            let lines: Vec<&Line> = answers.iter().map(|(_, l)| l).collect();
            write!(out, "{}", serde_yaml::to_string(&lines)?)?;
        }
        Format::Text => {
            let p = Painter::for_stdout();
            for (title, l) in answers {
                // Request and config values are echoed: made printable for the terminal.
                writeln!(out, "{}", shown(title))?;
                let mut rows = vec![[
                    "ENFORCER".to_owned(),
                    "DECISION".to_owned(),
                    "POLICY".to_owned(),
                    "RULE".to_owned(),
                    "REASON".to_owned(),
                ]];
                let status = l.status.map_or_else(String::new, |s| format!(" ({s})"));
                rows.push([
                    "waypoint".into(),
                    format!("{}{status}", l.decision),
                    l.policy.clone().unwrap_or_else(|| "-".into()),
                    l.rule.map_or_else(|| "-".into(), |r| r.to_string()),
                    shown_max(&l.reason, 8192).into_owned(),
                ]);
                if let Some(z) = &l.ztunnel {
                    rows.push([
                        "ztunnel".into(),
                        z.decision.to_owned(),
                        z.policy.clone().unwrap_or_else(|| "-".into()),
                        z.rule.map_or_else(|| "-".into(), |r| r.to_string()),
                        shown_max(&z.reason, 8192).into_owned(),
                    ]);
                }
                let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
                let (w0, w1, w2, w3) = (width(0), width(1), width(2), width(3));
                for (n, r) in rows.iter().enumerate() {
                    let decision = format!("{:w1$}", r[1]);
                    let decision = if n == 0 {
                        decision
                    } else if r[1].starts_with("allow") {
                        p.paint(Colour::Green, &decision)
                    } else {
                        p.paint(Colour::Red, &decision)
                    };
                    writeln!(
                        out,
                        "  {:w0$}  {decision}  {:w2$}  {:w3$}  {}",
                        r[0], r[2], r[3], r[4]
                    )?;
                }
            }
        }
    }
    Ok(())
}

fn decide(
    store: &Store,
    compiled: &Compiled,
    rt: &tokio::runtime::Runtime,
    req: &EvalRequest,
    mode: PathNormalization,
) -> anyhow::Result<Line> {
    let (authorizer, authn) = (&compiled.authorizer, &compiled.authn);
    let target = match target_of(store, compiled, &req.destination) {
        Ok(t) => t,
        // What the waypoint answers a CONNECT for a destination it does not serve.
        Err(reason) => return Ok(Line::local(503, format!("not served: {reason}"))),
    };
    let peer = req.source.principal.as_deref().map(PeerIdentity::new);
    if req.jwt.is_some() && req.token.is_some() {
        bail!("give jwt.claims or token, not both");
    }
    if req.token.is_some() && req.http.is_none() {
        bail!("a token needs an http request");
    }
    if req.http.as_ref().is_some_and(|h| h.method.is_empty()) {
        bail!("http.method must not be empty");
    }
    let mut headers = match &req.http {
        Some(h) => header_map(h, req.token.as_deref())?,
        None => http::HeaderMap::new(),
    };
    // What the waypoint refuses before authentication and policy (400, 404).
    if let Some(h) = &req.http
        && let Err(e) = RequestView::build(incoming(h, &headers), mode)
    {
        return Ok(Line::local(e.status(), format!("refused: {e}")));
    }
    let verified = match (&req.http, authn.for_target(target.as_deref())) {
        (Some(h), Some(a)) => match authenticate(a, rt, h, &mut headers) {
            Ok(v) => v,
            Err(e) => return Ok(Line::local(e.status(), format!("unauthenticated: {e}"))),
        },
        _ => None,
    };
    let claims = req.jwt.as_ref().map(|j| {
        let claims = j
            .claims
            .iter()
            .map(|(k, v)| (k.clone(), claim(v)))
            .collect();
        JwtClaims::new(claims, &DEFAULT_SPACE_DELIMITED_CLAIMS)
    });
    let token = match (&claims, &verified) {
        (Some(claims), _) => Some(Token {
            claims,
            principal: None,
        }),
        (None, Some(v)) => Some(Token {
            claims: &v.claims,
            principal: Some(&v.principal),
        }),
        (None, None) => None,
    };
    let view = match &req.http {
        Some(h) => match RequestView::build(incoming(h, &headers), mode) {
            Ok(v) => Some(v),
            Err(e) => return Ok(Line::local(e.status(), format!("refused: {e}"))),
        },
        None => None,
    };
    let inputs = Inputs {
        connection: Connection {
            peer: peer.as_ref(),
            source_ip: req.source.ip,
            remote_ip: req.source.remote_ip,
            destination_ip: req.destination.ip,
            destination_port: req.destination.port,
            sni: req.sni.as_deref(),
        },
        target: target.as_deref(),
        destination: &target.as_deref().unwrap_or("the waypoint"),
        http: view.as_ref(),
        token,
    };
    // The proxy's own decision function; nothing is counted offline.
    let d = policy::decide(authorizer, &inputs, None);
    Ok(Line {
        decision: if d.allowed { "allow" } else { "deny" },
        status: d.status,
        policy: d.matched.map(|m| m.policy.to_string()),
        rule: d.matched.map(|m| m.rule),
        action: d.action().map(|a| a.as_str()),
        reason: d.to_string(),
        ztunnel: None,
    })
}

/// Runs the waypoint's RequestAuthentication on the request's headers and query, applying a
/// valid token's header changes to `headers` as the waypoint would before policy.
fn authenticate(
    authn: &Authenticator,
    rt: &tokio::runtime::Runtime,
    http: &Http,
    headers: &mut http::HeaderMap,
) -> Result<Option<Arc<Verified>>, AuthnError> {
    let target = http
        .path
        .split_once('#')
        .map_or(http.path.as_str(), |(t, _)| t);
    let query = target.split_once('?').map(|(_, q)| q);
    authn.sanitize(headers);
    let accepted = rt.block_on(authn.authenticate(headers, query))?;
    if let Some(a) = &accepted {
        a.apply(headers);
    }
    Ok(accepted.map(|a| a.verified))
}
