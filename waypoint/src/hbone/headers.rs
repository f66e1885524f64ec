//! The metadata ztunnel puts on a CONNECT: `forwarded` (the original client), `baggage` (workload
//! metadata) and `traceparent` (W3C trace context).

use std::net::{IpAddr, SocketAddr};

/// The first `for=` of an RFC 7239 `forwarded` header: ztunnel's record of the client address.
/// Accepts `for=1.2.3.4`, `for="1.2.3.4:5"`, `for="[::1]:5"` and `for="[::1]"`.
pub fn forwarded_for(value: &str) -> Option<IpAddr> {
    let first = value.split(',').next()?;
    let node = first.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })?;
    let node = node.trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = node.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = node.strip_prefix('[')?;
    inner.split_once(']')?.0.parse().ok()
}

/// `host=` of the first `forwarded` element: the destination service's hostname, when ztunnel knew it.
pub fn forwarded_host(value: &str) -> Option<&str> {
    let first = value.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("host")
            .then_some(v.trim().trim_matches('"'))
    })
}

/// A W3C `traceparent` re-emitted in canonical form: `00-<32 hex>-<16 hex>-<2 hex>`, lowercase,
/// ids not all zero. A later version is read for its first four fields (as Trace Context says a
/// version-00 reader must) and re-emitted as version 00; anything else is `None`, never copied.
pub fn traceparent(value: &str) -> Option<String> {
    let lower_hex = |p: &str, len: usize| {
        p.len() == len
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let v = value.trim_matches([' ', '\t']);
    if v.len() < 55 || !v.is_char_boundary(55) {
        return None;
    }
    let (head, tail) = v.split_at(55);
    let mut parts = head.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if !lower_hex(version, 2)
        || version == "ff"
        || !lower_hex(trace, 32)
        || !lower_hex(span, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append `-...`.
    if (version == "00" && !tail.is_empty()) || (!tail.is_empty() && !tail.starts_with('-')) {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || span.bytes().all(|b| b == b'0') {
        return None;
    }
    Some(format!("00-{trace}-{span}-{flags}"))
}

/// A W3C `tracestate` re-emitted from its valid list members only: keys and values checked
/// against Trace Context's grammar, duplicates and empty members dropped, at most 32 members
/// and 512 bytes; `None` when nothing valid remains.
pub fn tracestate(value: &str) -> Option<String> {
    fn key_ok(k: &str) -> bool {
        let part = |p: &str, first_digit: bool, max: usize| {
            let b = p.as_bytes();
            !b.is_empty()
                && b.len() <= max
                && (b[0].is_ascii_lowercase() || (first_digit && b[0].is_ascii_digit()))
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*/".contains(c))
        };
        match k.split_once('@') {
            None => part(k, false, 256),
            Some((tenant, system)) => part(tenant, true, 241) && part(system, false, 14),
        }
    }
    fn value_ok(v: &str) -> bool {
        v.len() <= 256
            && !v.ends_with(' ')
            && v.bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
    }
    let mut out = String::new();
    let mut keys: Vec<&str> = Vec::new();
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        let Some((k, v)) = member.split_once('=') else {
            continue;
        };
        if !key_ok(k) || !value_ok(v) || keys.contains(&k) {
            continue;
        }
        if keys.len() == 32 || out.len() + member.len() + 1 > 512 {
            break;
        }
        keys.push(k);
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(member);
    }
    (!out.is_empty()).then_some(out)
}

/// `baggage` members as `(key, value)`, skipping malformed members and properties.
pub fn baggage(value: &str) -> impl Iterator<Item = (&str, &str)> {
    value.split(',').filter_map(|member| {
        let kv = member.split(';').next()?;
        let (k, v) = kv.split_once('=')?;
        let (k, v) = (k.trim(), v.trim());
        (!k.is_empty()).then_some((k, v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_forms() {
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(
            forwarded_for(r#"for="10.0.0.7:4312";host=a.b.svc"#),
            Some(v4)
        );
        assert_eq!(forwarded_for("for=10.0.0.7"), Some(v4));
        assert_eq!(
            forwarded_for(r#"FOR="[fd00::7]:80""#),
            Some("fd00::7".parse().unwrap())
        );
        assert_eq!(
            forwarded_for(r#"for="[fd00::7]""#),
            Some("fd00::7".parse().unwrap())
        );
        assert_eq!(forwarded_for("for=10.0.0.7, for=10.0.0.8"), Some(v4));
        assert_eq!(forwarded_for("for=_hidden"), None);
        assert_eq!(forwarded_for("host=x"), None);
        assert_eq!(forwarded_for(""), None);
        assert_eq!(
            forwarded_host(r#"for="1.2.3.4:5";host=web.ns.svc.cluster.local"#),
            Some("web.ns.svc.cluster.local")
        );
    }

    #[test]
    fn traceparent_validation() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(traceparent(good).as_deref(), Some(good));
        assert_eq!(
            traceparent("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later").as_deref(),
            Some(good),
            "a later version is re-emitted as 00"
        );
        assert_eq!(
            traceparent("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"),
            None
        );
        assert_eq!(
            traceparent("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x"),
            None
        );
        assert_eq!(traceparent(&format!("{good}{}", "-x".repeat(1000))), None);
        assert_eq!(
            traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x"),
            None
        );
        assert_eq!(
            traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
            None
        );
        assert_eq!(
            traceparent("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            None
        );
        assert_eq!(traceparent("00-xyz-b7ad6b7169203331-01"), None);
        assert!(
            traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future").is_some()
        );
    }

    #[test]
    fn tracestate_members() {
        assert_eq!(
            tracestate("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7").as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(
            tracestate("Bad Key=1,ok=2,ok=3,t@sys=x,=y,z").as_deref(),
            Some("ok=2,t@sys=x")
        );
        assert_eq!(tracestate("a=b\u{7f}"), None);
        let many: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            tracestate(&many.join(",")).map(|t| t.split(',').count()),
            Some(32)
        );
    }

    #[test]
    fn baggage_members() {
        let b: Vec<_> =
            baggage("k8s.namespace.name=demo, service.name=web;prop=1,bad,=x").collect();
        assert_eq!(b, [("k8s.namespace.name", "demo"), ("service.name", "web")]);
    }
}
