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

/// A W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), or `None` when malformed. Version 00
/// only has these four fields; later versions may append fields, which are kept.
pub fn traceparent(value: &str) -> Option<&str> {
    let mut parts = value.split('-');
    let ok = |p: Option<&str>, len: usize| {
        p.is_some_and(|p| p.len() == len && p.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let version = parts.next();
    if !ok(version, 2) || version == Some("ff") {
        return None;
    }
    let (trace, span) = (parts.next(), parts.next());
    if !ok(trace, 32) || !ok(span, 16) || !ok(parts.next(), 2) {
        return None;
    }
    // All-zero trace or span ids are invalid.
    if trace.is_some_and(|t| t.bytes().all(|b| b == b'0'))
        || span.is_some_and(|s| s.bytes().all(|b| b == b'0'))
    {
        return None;
    }
    if version == Some("00") && parts.next().is_some() {
        return None;
    }
    Some(value)
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
        assert_eq!(traceparent(good), Some(good));
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
    fn baggage_members() {
        let b: Vec<_> =
            baggage("k8s.namespace.name=demo, service.name=web;prop=1,bad,=x").collect();
        assert_eq!(b, [("k8s.namespace.name", "demo"), ("service.name", "web")]);
    }
}
