//! HTTP/1 inside a tunnel as Envoy's HTTP/1 codec serves it, in front of Pingora's.
//!
//! Pingora's codec parses and proxies; what Envoy's codec decides before any filter is decided
//! here, per request, pipelined or not:
//! * a request head over `max_request_headers_kb` (60 KiB) or with more than
//!   `max_request_headers_count` (100) fields: `431`;
//! * `Content-Length` with `Transfer-Encoding`: `400`; a transfer-coding other than `chunked`:
//!   `501`; a `Content-Length` that is not one number: `400`; a head that does not parse: `400`;
//! * HTTP/1.0: `426` unless `accept_http10` (Istio's `PILOT_HTTP10`);
//! * the whole head within the request-headers timeout from its first byte: else `408`.
//!
//! Each of these closes the connection after the answer, as Envoy's codec errors do.
//!
//! [`head`] judges bytes, [`chunked`] follows chunked framing, [`gate`] hands Pingora one request
//! at a time and [`conn`] is the loop.

mod chunked;
pub(crate) mod conn;
mod gate;
mod head;

/// Limits of the HTTP/1 codec, with Envoy's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http1Settings {
    /// Largest request head (request line and header fields, as sent), in bytes: Envoy's
    /// `max_request_headers_kb` (60 KiB). At most 1 MiB (Pingora's own bound).
    pub max_request_headers_bytes: usize,
    /// Most header fields in one request: Envoy's `max_headers_count` (100). At most 256
    /// (Pingora's own bound).
    pub max_request_headers_count: usize,
    /// Serve HTTP/1.0 requests (Envoy's `accept_http_10`, off unless istiod runs with
    /// `PILOT_HTTP10=1`).
    pub accept_http10: bool,
}

/// Pingora's HTTP/1 parser refuses heads larger than this (1 MiB) and more fields than
/// [`MAX_FIELDS`]; the limits here must stay within both.
pub const MAX_HEAD_BYTES: usize = 1024 * 1024 - 1;
/// See [`MAX_HEAD_BYTES`].
pub const MAX_FIELDS: usize = 256;

impl Default for Http1Settings {
    fn default() -> Self {
        Http1Settings {
            max_request_headers_bytes: 60 * 1024,
            max_request_headers_count: 100,
            accept_http10: false,
        }
    }
}
