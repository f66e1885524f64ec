//! One HTTP/1 connection inside a tunnel: each request head is read and judged here (size, field
//! count, version, framing, the request-headers timeout), then handed to Pingora through the
//! [`gate`](super::gate), one request at a time, so pipelined requests are answered in order and
//! every one of them is judged and timed as the first.

use std::sync::Arc;
use std::time::Duration;

use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::http::ResponseHeader;
use pingora::protocols::GetProxyDigest;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSocket, VirtualSocketStream};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use super::Http1Settings;
use super::gate::{self, Keeper};
use super::head::{self, Head, Refusal};
use crate::metrics::Metrics;
use crate::proxy::http::HttpApp;
use crate::proxy::tunnel::TunnelCtx;

/// Envoy's answer when `request_headers_timeout` fires.
const TIMED_OUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// What the wait for the next request head ended with.
enum Next {
    Head(Head),
    Refused(Refusal),
    TimedOut,
    /// The client closed (or reset) before a whole head.
    Closed,
}

/// Serves HTTP/1 requests from `io` until the client is done, a request cannot be judged, or
/// the codec leaves a request unfinished (then the connection is closed, as Envoy closes it).
pub(crate) async fn serve<S: VirtualSocket + 'static>(
    http: &Arc<HttpProxy<HttpApp>>,
    io: S,
    ctx: Arc<TunnelCtx>,
    settings: &Http1Settings,
    headers_timeout: Duration,
    metrics: &Metrics,
    shutdown: &ShutdownWatch,
) {
    let (gate, keeper) = gate::new(io);
    let mut stream = Stream::from(VirtualSocketStream::new(Box::new(gate)));
    let Ok(header) = ResponseHeader::build(200, None) else {
        return;
    };
    stream.set_proxy_digest(ProxyDigest::new(
        Box::new(header),
        Some(Box::new(ctx.clone())),
    ));
    let mut stream: pingora::protocols::Stream = Box::new(stream);
    let mut persistent: Option<HttpPersistentSettings> = None;
    loop {
        let head = match next_head(&keeper, settings, headers_timeout, shutdown).await {
            Next::Head(head) => head,
            Next::Closed => return,
            Next::TimedOut => {
                metrics.timeouts.request_headers.inc();
                tracing::info!(timeout = ?headers_timeout, target = %ctx.target, "request headers incomplete; 408");
                let _ = keeper.answer_and_close(TIMED_OUT).await;
                return;
            }
            Next::Refused(refusal) => {
                let (status, phrase) = refusal.status();
                metrics.request(false, status);
                tracing::info!(
                    peer = ?ctx.conn.peer.as_ref().map(|p| p.uri()),
                    client = ?ctx.client_ip,
                    target = %ctx.target,
                    status,
                    reason = %refusal,
                    "request refused by the HTTP/1 codec"
                );
                let _ = keeper
                    .answer_and_close(refusal_bytes(status, phrase).as_bytes())
                    .await;
                return;
            }
        };
        keeper.admit(&head);
        let mut session = ServerSession::new_http1(stream);
        match persistent.take() {
            Some(p) => p.apply_to_session(&mut session),
            None => session.set_keepalive(Some(60)),
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        let Some(reused) = http.process_new_http(session, shutdown).await else {
            return;
        };
        // A request whose body the codec did not finish (answered early, say) leaves bytes
        // nobody can frame: the connection ends here.
        if !keeper.request_done() {
            return;
        }
        let (s, p) = reused.consume();
        stream = s;
        persistent = p;
    }
}

/// An Envoy codec error reply: the reason phrase as a plain-text body, then close.
fn refusal_bytes(status: u16, phrase: &str) -> String {
    format!(
        "HTTP/1.1 {status} {phrase}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n{phrase}",
        phrase.len()
    )
}

/// Resolves once the process is shutting down.
async fn shutting_down(mut watch: ShutdownWatch) {
    while !*watch.borrow_and_update() {
        if watch.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits for the next request head: as long as the client likes for its first byte (the stream
/// idle timeout bounds that; a shutdown ends the wait), then `limit` for the rest of the head.
async fn next_head<S: VirtualSocket>(
    keeper: &Keeper<S>,
    settings: &Http1Settings,
    limit: Duration,
    shutdown: &ShutdownWatch,
) -> Next {
    let judge = || {
        keeper.with_early(|b| {
            if b.is_empty() {
                None
            } else {
                Some(head::parse(b, settings))
            }
        })
    };
    loop {
        match judge() {
            Some(Ok(Some(head))) => return Next::Head(head),
            Some(Err(refusal)) => return Next::Refused(refusal),
            Some(Ok(None)) => break,
            None => {}
        }
        // An idle keep-alive connection is closed when the process drains, as Pingora's own
        // loop closes it.
        let filled = tokio::select! {
            r = keeper.fill() => r,
            () = shutting_down(shutdown.clone()) => return Next::Closed,
        };
        if !matches!(filled, Ok(n) if n > 0) {
            return Next::Closed;
        }
    }
    let rest = async {
        loop {
            let n = match keeper.fill().await {
                Ok(n) if n > 0 => n,
                _ => return Next::Closed,
            };
            // A head can only end, or grow a field, at a line feed: a client trickling bytes
            // does not get the whole head parsed again for each of them.
            let worth = keeper.with_early(|b| {
                b.len() > settings.max_request_headers_bytes || b[b.len() - n..].contains(&b'\n')
            });
            if !worth {
                continue;
            }
            match judge() {
                Some(Ok(Some(head))) => return Next::Head(head),
                Some(Err(refusal)) => return Next::Refused(refusal),
                _ => {}
            }
        }
    };
    tokio::time::timeout(limit, rest)
        .await
        .unwrap_or(Next::TimedOut)
}
