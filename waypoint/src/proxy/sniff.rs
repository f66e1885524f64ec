//! Telling HTTP from opaque bytes by the first bytes a client sends, on ports whose protocol is
//! not declared, as Envoy's `http_inspector` listener filter does for istiod's waypoint.
//!
//! * The h2 connection preface makes the connection h2c.
//! * Anything else that starts like an HTTP/1.x request line, a method that is an RFC 9110
//!   token (any token: `PURGE`, `PROPFIND` and methods nobody registered as well as `GET`) and
//!   then a space, makes it HTTP/1. Everything after that is the HTTP/1 codec's to accept or
//!   refuse, so a broken request line is answered `400` rather than relayed as bytes.
//! * Only bytes that cannot begin a request (a first byte that is not a token character, a
//!   token followed by anything but a space) make it opaque TCP.
//!
//! How long the bytes may take to arrive is the caller's business ([`super::inbound`]):
//! [`Sniffed::NeedMore`] never turns into a decision by itself.

use std::time::Duration;

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a client on a port with no declared protocol may stay silent before the tunnel is
/// closed: Envoy's default `listener_filters_timeout` (15 s), which istiod leaves in place on
/// the waypoint's listener (its `http_inspector` runs with `continue_on_listener_filters_timeout`
/// off, so a silent connection is closed, never turned into TCP).
pub const DEFAULT_DETECTION_TIMEOUT: Duration = Duration::from_secs(15);

/// What the first bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Http1,
    H2c,
    Opaque,
    /// Too few bytes to tell yet.
    NeedMore,
}

/// RFC 9110 §5.6.2 `tchar`.
pub fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

pub fn sniff(buf: &[u8]) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniffed::H2c
        } else {
            Sniffed::NeedMore
        };
    }
    // `PRI` that is not the preface is an ordinary token method from here on.
    match buf.iter().position(|&c| !is_tchar(c)) {
        None => Sniffed::NeedMore,
        Some(0) => Sniffed::Opaque,
        Some(i) if buf[i] == b' ' => Sniffed::Http1,
        Some(_) => Sniffed::Opaque,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        let cases: &[(&[u8], Sniffed)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", Sniffed::Http1),
            (b"GE", Sniffed::NeedMore),
            (b"G", Sniffed::NeedMore),
            (b"", Sniffed::NeedMore),
            (b"PURGE /x HTTP/1.1", Sniffed::Http1),
            (b"PROPFIND ", Sniffed::Http1),
            // Methods are case-sensitive tokens; lower case is a token too (RFC 9110 §9.1).
            (b"get / HTTP/1.1", Sniffed::Http1),
            (b"M-SEARCH * HTTP/1.1", Sniffed::Http1),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0", Sniffed::H2c),
            (b"PRI * HT", Sniffed::NeedMore),
            // Starts like the preface, then is not it: an HTTP/1 request line with method PRI.
            (b"PRI * HTTP/1.1\r\n", Sniffed::Http1),
            (b"\x16\x03\x01\x02\x00", Sniffed::Opaque),
            (b"\r\nGET / HTTP/1.1", Sniffed::Opaque),
            (b" GET /", Sniffed::Opaque),
            (b"GET\t/", Sniffed::Opaque),
            (b"GET\r\n", Sniffed::Opaque),
            (b"G\xc3\xa9T /", Sniffed::Opaque),
            (b"SSH-2.0-OpenSSH_9.6\r\n", Sniffed::Opaque),
            (b"\0\0\0\x08", Sniffed::Opaque),
        ];
        for (bytes, want) in cases {
            assert_eq!(sniff(bytes), *want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn every_prefix_of_a_request_waits_then_decides_http() {
        let req = b"PROPFIND /dav HTTP/1.1\r\n";
        for n in 1..b"PROPFIND".len() + 1 {
            assert_eq!(sniff(&req[..n]), Sniffed::NeedMore, "{n}");
        }
        assert_eq!(sniff(&req[..b"PROPFIND ".len()]), Sniffed::Http1);
    }
}
