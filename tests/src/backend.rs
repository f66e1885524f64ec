//! Demo apps behind the mesh: an HTTP/1.1 server that reports what reached it, and a TCP echo.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Starts an HTTP/1.1 keep-alive server on `addr` (request bodies framed by Content-Length or
/// chunked). Every response is `200` with a body of
/// `name method path` and one `header: value` line per interesting header it received
/// (`x-forwarded-for`, `traceparent`, `tracestate`, every `authorization` and `cookie`,
/// `x-jwt-*`), so tests can see what the waypoint forwarded.
pub async fn http(addr: SocketAddr, name: &'static str) -> std::io::Result<JoinHandle<()>> {
    let l = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve_http(s, name));
        }
    }))
}

async fn serve_http(mut s: TcpStream, name: &'static str) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        // Read one request head.
        let (head_len, method, path, content_length, chunked, extra) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let get = |k: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(k))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let mut extra = String::new();
                for k in ["x-forwarded-for", "traceparent", "tracestate"] {
                    if let Some(v) = get(k) {
                        extra.push_str(&format!("{k}: {v}\n"));
                    }
                }
                // Every credential line, in order: what a token left behind in the request.
                for h in req.headers.iter().filter(|h| {
                    h.name.eq_ignore_ascii_case("authorization")
                        || h.name.eq_ignore_ascii_case("cookie")
                }) {
                    extra.push_str(&format!(
                        "{}: {}\n",
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value)
                    ));
                }
                // What RequestAuthentication adds (outputClaimToHeaders, outputPayloadToHeader).
                for h in req.headers.iter().filter(|h| h.name.starts_with("x-jwt-")) {
                    extra.push_str(&format!(
                        "{}: {}\n",
                        h.name,
                        String::from_utf8_lossy(h.value)
                    ));
                }
                let cl = get("content-length")
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let chunked =
                    get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                break (
                    n,
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                    cl,
                    chunked,
                    extra,
                );
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        // The request's end: after its Content-Length body, or its last chunk and trailers.
        let end = loop {
            let end = if chunked {
                chunked_end(&buf[head_len..]).map(|n| head_len + n)
            } else {
                Some(head_len + content_length).filter(|&e| buf.len() >= e)
            };
            if let Some(end) = end {
                break end;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        buf.drain(..end);
        // `/delay/<ms>` answers late: in-flight requests for drain tests.
        if let Some(ms) = path
            .strip_prefix("/delay/")
            .and_then(|m| m.parse::<u64>().ok())
        {
            tokio::time::sleep(std::time::Duration::from_millis(ms.min(10_000))).await;
        }
        let body = format!("{name} {method} {path}\n{extra}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await?;
    }
}

/// Where a chunked body at the start of `b` ends (RFC 9112 §7.1), once it is all there.
fn chunked_end(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let httparse::Status::Complete((n, size)) = httparse::parse_chunk_size(&b[at..]).ok()?
        else {
            return None;
        };
        at += n;
        if size == 0 {
            // Trailer fields, then the blank line.
            let rest = &b[at..];
            if rest.starts_with(b"\r\n") {
                return Some(at + 2);
            }
            return rest
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| at + i + 4);
        }
        at += usize::try_from(size).ok()?.checked_add(2)?;
        if at > b.len() {
            return None;
        }
    }
}

/// Starts a TCP echo server on `addr`; it echoes until the client half-closes, then closes.
pub async fn echo(addr: SocketAddr) -> std::io::Result<JoinHandle<()>> {
    let l = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    }))
}

/// Starts an HTTP/2 prior-knowledge (h2c) server on `addr`, like a gRPC app: every request gets
/// `200` with body `name h2c <method> <path>`. A path under `/trailers/` is answered once its
/// request has ended, with trailers as gRPC sends them: `grpc-status: 0` and
/// `x-request-trailers`, the names of the request trailers it received (`none`).
pub async fn h2c(addr: SocketAddr, name: &'static str) -> std::io::Result<JoinHandle<()>> {
    let l = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    if req.uri().path().starts_with("/trailers/") {
                        tokio::spawn(answer_with_trailers(req, respond, name));
                        continue;
                    }
                    let body = format!("{name} h2c {} {}\n", req.method(), req.uri().path());
                    let resp = http::Response::builder()
                        .status(200)
                        .header("content-type", "text/plain")
                        .body(())
                        .unwrap_or_default();
                    if let Ok(mut send) = respond.send_response(resp, false) {
                        let _ = send.send_data(bytes::Bytes::from(body), true);
                    }
                }
            });
        }
    }))
}

/// Reads the request to its end (body, then trailers), then answers with a body and trailers.
async fn answer_with_trailers(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    name: &'static str,
) {
    let path = req.uri().path().to_owned();
    let mut body = req.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let names = match body.trailers().await {
        Ok(Some(t)) if !t.is_empty() => t.keys().map(|k| k.as_str()).collect::<Vec<_>>().join(","),
        _ => "none".to_owned(),
    };
    let resp = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap_or_default();
    let Ok(mut send) = respond.send_response(resp, false) else {
        return;
    };
    let _ = send.send_data(bytes::Bytes::from(format!("{name} {path}\n")), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    if let Ok(v) = http::HeaderValue::from_str(&names) {
        trailers.insert("x-request-trailers", v);
    }
    let _ = send.send_trailers(trailers);
}
