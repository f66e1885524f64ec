//! One HTTP/1 request head, judged as Envoy's HTTP/1 codec judges it before any filter runs:
//! its size and field count, its version, and how its body is framed. Pure: bytes in, a verdict
//! out; [`super::conn`] does the reading.

use super::Http1Settings;

/// How the body after a head is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `Content-Length: n` (0 when the request has neither field).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// An `Upgrade` request: after a `101` the connection is the upgraded protocol's, so no
    /// further request is read from it.
    Upgrade(u64),
}

/// A complete head that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    /// Bytes up to and including the blank line.
    pub(crate) len: usize,
    pub(crate) framing: Framing,
}

/// Why a head is answered by the codec, with Envoy's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("request head larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("more than {limit} request header fields")]
    TooManyFields { limit: usize },
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("invalid Content-Length {0:?}")]
    InvalidLength(String),
    #[error("transfer-coding {0:?} is not chunked")]
    UnsupportedCoding(String),
    #[error("HTTP/1.0 request and HTTP/1.0 is not accepted")]
    Http10,
    #[error("more than {MAX_EMPTY_LINES} empty lines before the request line")]
    EmptyLines,
}

/// Empty lines tolerated before a request line (RFC 9112 §2.2 asks servers to ignore at least
/// one; some clients send a CRLF after a body). More are refused: every line feed makes the head
/// be parsed again, and only these lines could grow without limit under the field count.
const MAX_EMPTY_LINES: usize = 4;

impl Refusal {
    /// Envoy's status and reason phrase (its codec answers with the phrase as the body).
    pub(crate) fn status(&self) -> (u16, &'static str) {
        match self {
            Refusal::TooLarge { .. } | Refusal::TooManyFields { .. } => {
                (431, "Request Header Fields Too Large")
            }
            Refusal::Malformed(_)
            | Refusal::LengthAndChunked
            | Refusal::InvalidLength(_)
            | Refusal::EmptyLines => (400, "Bad Request"),
            Refusal::UnsupportedCoding(_) => (501, "Not Implemented"),
            Refusal::Http10 => (426, "Upgrade Required"),
        }
    }
}

/// Judges the bytes buffered so far: `Ok(None)` while the head is incomplete and within limits.
pub(crate) fn parse(buf: &[u8], settings: &Http1Settings) -> Result<Option<Head>, Refusal> {
    let limit = settings.max_request_headers_bytes;
    let leading = buf.iter().take_while(|&&c| c == b'\r' || c == b'\n');
    if leading.filter(|&&c| c == b'\n').count() > MAX_EMPTY_LINES {
        return Err(Refusal::EmptyLines);
    }
    // On the stack: this runs for every request, and again as more of a head arrives.
    let mut fields = [httparse::EMPTY_HEADER; super::MAX_FIELDS];
    let count = settings
        .max_request_headers_count
        .clamp(1, super::MAX_FIELDS);
    let mut req = httparse::Request::new(&mut fields[..count]);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limit => {
            return Err(Refusal::TooLarge { limit });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::TooManyFields {
                limit: settings.max_request_headers_count,
            });
        }
        Err(e) => return Err(Refusal::Malformed(e)),
    };
    if len > limit {
        return Err(Refusal::TooLarge { limit });
    }
    // httparse reads only HTTP/1.x versions: 0 is HTTP/1.0.
    if req.version == Some(0) && !settings.accept_http10 {
        return Err(Refusal::Http10);
    }
    Ok(Some(Head {
        len,
        framing: framing(req.headers)?,
    }))
}

/// The body's framing, refusing what Envoy's codec refuses: both length fields (`400`, checked
/// first), a transfer-coding other than exactly `chunked` (`501`), a length that is not one
/// decimal number (`400`; repeats of the same value are one value, RFC 9110 §8.6).
fn framing(fields: &[httparse::Header<'_>]) -> Result<Framing, Refusal> {
    fn values<'a>(
        fields: &'a [httparse::Header<'a>],
        name: &'static str,
    ) -> impl Iterator<Item = &'a [u8]> {
        fields
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
    let values = |name| values(fields, name);
    let mut codings = values("transfer-encoding").peekable();
    let mut lengths = values("content-length").peekable();
    if codings.peek().is_some() && lengths.peek().is_some() {
        return Err(Refusal::LengthAndChunked);
    }
    if codings.peek().is_some() {
        let joined = codings.collect::<Vec<_>>().join(&b","[..]);
        return if joined.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Ok(Framing::Chunked)
        } else {
            Err(Refusal::UnsupportedCoding(
                String::from_utf8_lossy(&joined).into_owned(),
            ))
        };
    }
    let mut length = None;
    for value in lengths.flat_map(|v| v.split(|&c| c == b',')) {
        let v = value.trim_ascii();
        let invalid = || Refusal::InvalidLength(String::from_utf8_lossy(v).into_owned());
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Err(invalid());
        }
        let n = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(invalid)?;
        if length.is_some_and(|l| l != n) {
            return Err(invalid());
        }
        length = Some(n);
    }
    let length = length.unwrap_or(0);
    let upgrade = values("upgrade").next().is_some()
        && values("connection").any(|v| {
            v.split(|&c| c == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        });
    Ok(if upgrade {
        Framing::Upgrade(length)
    } else {
        Framing::Length(length)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Http1Settings {
        Http1Settings::default()
    }

    fn judge(bytes: &[u8]) -> Result<Option<Head>, Refusal> {
        parse(bytes, &settings())
    }

    fn status(bytes: &[u8]) -> u16 {
        match judge(bytes) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(e) => e.status().0,
        }
    }

    #[test]
    fn framing_as_envoys_codec() {
        let cases: &[(&[u8], Result<Framing, u16>)] = &[
            (b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", Ok(Framing::Length(0))),
            (
                b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 12\r\n\r\n",
                Ok(Framing::Length(12)),
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n",
                Ok(Framing::Length(3)),
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 3, 3\r\n\r\n",
                Ok(Framing::Length(3)),
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
                Err(400),
            ),
            (b"POST / HTTP/1.1\r\ncontent-length: +3\r\n\r\n", Err(400)),
            (b"POST / HTTP/1.1\r\ncontent-length: 0x3\r\n\r\n", Err(400)),
            (b"POST / HTTP/1.1\r\ncontent-length:\r\n\r\n", Err(400)),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 99999999999999999999999\r\n\r\n",
                Err(400),
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
                Ok(Framing::Chunked),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked \r\n\r\n",
                Ok(Framing::Chunked),
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
                Err(400),
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
                Err(400),
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                Err(501),
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
                Err(501),
            ),
            (
                b"GET / HTTP/1.1\r\nconnection: keep-alive, Upgrade\r\nupgrade: websocket\r\n\r\n",
                Ok(Framing::Upgrade(0)),
            ),
            (
                b"GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
                Ok(Framing::Length(0)),
            ),
        ];
        for (bytes, want) in cases {
            let got = judge(bytes)
                .map(|h| h.expect("complete").framing)
                .map_err(|e| e.status().0);
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn limits_version_and_partial_heads() {
        assert_eq!(status(b"GET / HTTP/1.1\r\nhost: a\r\n"), 0);
        assert_eq!(status(b"\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n"), 200);
        assert_eq!(status(b"\r\n\r\n\r\n\r\n\r\n"), 400);
        assert_eq!(status(b"\n\n\n\n\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.0\r\nhost: a\r\n\r\n"), 426);
        let accepting = Http1Settings {
            accept_http10: true,
            ..settings()
        };
        assert!(matches!(
            parse(b"GET / HTTP/1.0\r\n\r\n", &accepting),
            Ok(Some(_))
        ));
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 400);
        assert_eq!(status(b"GET /a b HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n"), 400);

        let big = format!(
            "GET / HTTP/1.1\r\nx-big: {}\r\n\r\n",
            "a".repeat(100 * 1024)
        );
        assert_eq!(status(big.as_bytes()), 431);
        // Refused as soon as the buffered part is over the limit, without the rest.
        assert_eq!(status(&big.as_bytes()[..61 * 1024]), 431);
        let fits = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(59 * 1024));
        assert_eq!(status(fits.as_bytes()), 200);

        let fields = |n: usize| {
            let mut r = String::from("GET / HTTP/1.1\r\n");
            for i in 0..n {
                r.push_str(&format!("x-{i}: v\r\n"));
            }
            r.push_str("\r\n");
            r
        };
        assert_eq!(status(fields(100).as_bytes()), 200);
        assert_eq!(status(fields(101).as_bytes()), 431);
        assert_eq!(status(fields(150).as_bytes()), 431);
        // Too many fields are seen before the head is complete.
        let partial = fields(150);
        assert_eq!(status(&partial.as_bytes()[..partial.len() - 2]), 431);
    }
}
