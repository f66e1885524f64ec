//! A minimal HTTP/1.1 client over any byte stream (an HBONE tunnel, a TCP connection), enough to
//! drive keep-alive requests through the waypoint and read the answers.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A response: status, headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request (`Content-Length` body) and reads one response on `io`, leaving the
/// connection ready for the next. `Ok(None)` when the peer closed before answering.
pub async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Option<Response>> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: httpbin\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw(io, req.as_bytes()).await
}

/// Writes `bytes` as they are (a request head and its `Content-Length` body) and reads one
/// response. `Ok(None)` when the peer closed before answering.
pub async fn raw<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    bytes: &[u8],
) -> anyhow::Result<Option<Response>> {
    io.write_all(bytes).await?;
    let mut buf = Vec::new();
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut hs);
        if let httparse::Status::Complete(n) = resp.parse(&buf)? {
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let status = resp.code.unwrap_or(0);
            let len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < n + len {
                let mut chunk = [0u8; 4096];
                let r = io.read(&mut chunk).await?;
                anyhow::ensure!(r > 0, "connection closed inside a response body");
                buf.extend_from_slice(&chunk[..r]);
            }
            return Ok(Some(Response {
                status,
                headers,
                body: String::from_utf8_lossy(&buf[n..n + len]).into_owned(),
            }));
        }
        let mut chunk = [0u8; 4096];
        let r = io.read(&mut chunk).await?;
        if r == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..r]);
    }
}
