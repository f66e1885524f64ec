//! The byte stream under Pingora's HTTP/1 codec, handing it one request at a time.
//!
//! The connection loop ([`super::conn`]) reads each request head itself, judges it, then opens
//! the gate for exactly that request: its head, then its body as framed (`Content-Length`, or
//! chunked up to the last chunk and trailers). The codec therefore never reads past the request
//! it is serving, so bytes a client pipelined behind it wait here, and the loop reads, judges and
//! times the next head as it did the first. Between requests the gate is shut: the codec's reads
//! only watch for the client closing, and what arrives early is kept (up to a bound) for the
//! next head.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::chunked::Chunked;
use super::head::{Framing, Head};

/// Bytes read ahead of the codec while the gate is shut: a client pipelining more than this
/// waits (HTTP/2 flow control holds it back in its tunnel) until the codec is done.
const MAX_EARLY: usize = 128 * 1024;

/// What the codec may read of the current request's body.
#[derive(Debug, Clone, Copy)]
enum Body {
    Length(u64),
    Chunked(Chunked),
    /// To the end of the stream: an upgrade, or chunked framing that could not be followed.
    Unbounded,
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    head: usize,
    body: Body,
}

impl Budget {
    const SHUT: Budget = Budget {
        head: 0,
        body: Body::Length(0),
    };

    fn finished(&self) -> bool {
        self.head == 0
            && match self.body {
                Body::Length(n) => n == 0,
                Body::Chunked(c) => c.is_done(),
                Body::Unbounded => false,
            }
    }

    /// At most this many of the next bytes may go, when that is known without looking at
    /// them.
    fn known_allowance(&self) -> Option<u64> {
        match self.body {
            Body::Length(n) => Some(self.head as u64 + n),
            Body::Chunked(_) if self.head > 0 => Some(self.head as u64),
            Body::Chunked(_) | Body::Unbounded => None,
        }
    }

    /// Lets through the start of `bytes` that belongs to the request; returns its length and
    /// whether the framing was lost (the codec then reads to the end of the stream).
    fn consume(&mut self, bytes: &[u8]) -> (usize, bool) {
        let head = self.head.min(bytes.len());
        self.head -= head;
        let rest = &bytes[head..];
        let (body, lost) = match &mut self.body {
            Body::Length(n) => {
                let take = usize::try_from(*n).unwrap_or(usize::MAX).min(rest.len());
                *n -= take as u64;
                (take, false)
            }
            Body::Chunked(c) => match c.scan(rest) {
                Ok(take) => (take, false),
                Err(_) => {
                    self.body = Body::Unbounded;
                    (rest.len(), true)
                }
            },
            Body::Unbounded => (rest.len(), false),
        };
        (head + body, lost)
    }
}

/// The stream and what has been read from it but not yet given to the codec.
pub(crate) struct Shared<S> {
    io: S,
    early: BytesMut,
    budget: Budget,
    eof: bool,
    /// The codec may have been handed bytes of a next request: no further request is read.
    lost: bool,
}

impl<S> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("early", &self.early.len())
            .field("budget", &self.budget)
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Shared<S> {
    /// Reads more of the stream into `early`; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.eof {
            return Poll::Ready(Ok(0));
        }
        let mut chunk = [0u8; 8192];
        let mut buf = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        if n == 0 {
            self.eof = true;
        }
        self.early.extend_from_slice(buf.filled());
        Poll::Ready(Ok(n))
    }

    /// The codec's read.
    fn poll_release(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if self.budget.finished() {
            // Shut: nothing for the codec but the end of the stream. Early bytes of a next
            // request are kept for the loop.
            loop {
                if self.eof && self.early.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                if self.eof || self.early.len() >= MAX_EARLY {
                    return Poll::Pending;
                }
                ready!(self.poll_fill(cx))?;
            }
        }
        if self.early.is_empty() {
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            let direct = self
                .budget
                .known_allowance()
                .is_none_or(|a| a >= buf.remaining() as u64);
            if direct {
                // Straight into the codec's buffer; whatever lies past the request goes back.
                let before = buf.filled().len();
                ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
                let (take, lost) = {
                    let new = &buf.filled()[before..];
                    if new.is_empty() {
                        self.eof = true;
                        return Poll::Ready(Ok(()));
                    }
                    self.budget.consume(new)
                };
                self.lost |= lost;
                let extra = buf.filled()[before + take..].to_vec();
                self.early.extend_from_slice(&extra);
                buf.set_filled(before + take);
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        let offered = self.early.len().min(buf.remaining());
        let (take, lost) = self.budget.consume(&self.early[..offered]);
        self.lost |= lost;
        buf.put_slice(&self.early[..take]);
        self.early.advance(take);
        Poll::Ready(Ok(()))
    }
}

/// The codec's end: a [`VirtualSocket`] over the shared state.
pub(crate) struct Gate<S> {
    shared: Arc<Mutex<Shared<S>>>,
}

impl<S> fmt::Debug for Gate<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

/// The connection loop's end.
pub(crate) struct Keeper<S> {
    shared: Arc<Mutex<Shared<S>>>,
}

impl<S> fmt::Debug for Keeper<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keeper").finish_non_exhaustive()
    }
}

fn lock<S>(m: &Mutex<Shared<S>>) -> MutexGuard<'_, Shared<S>> {
    // A panic while holding the lock left plain bytes and counters behind: still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A shut gate over `io` and the loop's handle on it.
pub(crate) fn new<S>(io: S) -> (Gate<S>, Keeper<S>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        early: BytesMut::new(),
        budget: Budget::SHUT,
        eof: false,
        lost: false,
    }));
    (
        Gate {
            shared: shared.clone(),
        },
        Keeper { shared },
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> Keeper<S> {
    /// Calls `f` with the bytes read ahead of the codec so far.
    pub(crate) fn with_early<T>(&self, f: impl FnOnce(&[u8]) -> T) -> T {
        f(&lock(&self.shared).early)
    }

    /// Reads more; `Ok(0)` at the end of the stream.
    pub(crate) async fn fill(&self) -> io::Result<usize> {
        std::future::poll_fn(|cx| lock(&self.shared).poll_fill(cx)).await
    }

    /// Opens the gate for one request whose head is at the start of the early bytes.
    pub(crate) fn admit(&self, head: &Head) {
        let body = match head.framing {
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(Chunked::default()),
            Framing::Upgrade(_) => Body::Unbounded,
        };
        lock(&self.shared).budget = Budget {
            head: head.len,
            body,
        };
    }

    /// Whether the codec has read the whole request it was admitted for, and nothing past it.
    pub(crate) fn request_done(&self) -> bool {
        let s = lock(&self.shared);
        s.budget.finished() && !s.lost
    }

    /// Writes all of `bytes` (a refusal) and ends our side of the stream.
    pub(crate) async fn answer_and_close(&self, bytes: &[u8]) -> io::Result<()> {
        let mut at = 0;
        while at < bytes.len() {
            let n = std::future::poll_fn(|cx| {
                Pin::new(&mut lock(&self.shared).io).poll_write(cx, &bytes[at..])
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            at += n;
        }
        std::future::poll_fn(|cx| Pin::new(&mut lock(&self.shared).io).poll_shutdown(cx)).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Gate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        lock(&self.shared).poll_release(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Gate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut lock(&self.shared).io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.shared).io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.shared).io).poll_shutdown(cx)
    }
}

impl<S: VirtualSocket> VirtualSocket for Gate<S> {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        lock(&self.shared).io.set_socket_option(opt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn head(len: usize, framing: Framing) -> Head {
        Head { len, framing }
    }

    /// Everything the codec can read right now, without waiting.
    async fn drain_ready(gate: &mut Gate<tokio::io::DuplexStream>) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut b = [0u8; 3];
            match tokio::time::timeout(std::time::Duration::from_millis(50), gate.read(&mut b))
                .await
            {
                Ok(Ok(0)) | Err(_) => return out,
                Ok(Ok(n)) => out.extend_from_slice(&b[..n]),
                Ok(Err(e)) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn the_codec_gets_one_request_at_a_time() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (mut gate, keeper) = new(server);
        let first = b"POST /a HTTP/1.1\r\ncontent-length: 4\r\n\r\nbody";
        let second = b"POST /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let third = b"GET /c HTTP/1.1\r\n\r\n";
        let mut all = Vec::new();
        for r in [&first[..], second, third] {
            all.extend_from_slice(r);
        }
        client.write_all(&all).await.unwrap();

        // Shut: the codec sees nothing.
        assert!(drain_ready(&mut gate).await.is_empty());
        while keeper.with_early(<[u8]>::len) < all.len() {
            keeper.fill().await.unwrap();
        }
        keeper.admit(&head(first.len() - 4, Framing::Length(4)));
        assert_eq!(drain_ready(&mut gate).await, first);
        assert!(keeper.request_done());
        keeper.admit(&head(second.len() - 13, Framing::Chunked));
        // The request consumed the early bytes it was given; the loop sees the next head.
        keeper.with_early(|e| assert!(e.starts_with(b"POST /b")));
        assert_eq!(drain_ready(&mut gate).await, second);
        assert!(keeper.request_done());
        keeper.with_early(|e| assert_eq!(e, third));
    }

    #[tokio::test]
    async fn reads_straight_through_are_cut_at_the_request_end() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (mut gate, keeper) = new(server);
        client.write_all(b"H").await.unwrap();
        keeper.fill().await.unwrap();
        keeper.admit(&head(1, Framing::Chunked));
        // Head from the early bytes, then the body arrives with a pipelined request behind it.
        let mut b = [0u8; 64];
        assert_eq!(gate.read(&mut b).await.unwrap(), 1);
        client
            .write_all(b"2\r\nok\r\n0\r\n\r\nGET /next")
            .await
            .unwrap();
        let got = drain_ready(&mut gate).await;
        assert_eq!(got, b"2\r\nok\r\n0\r\n\r\n");
        keeper.with_early(|e| assert_eq!(e, b"GET /next"));
        assert!(keeper.request_done());
    }

    #[tokio::test]
    async fn broken_chunked_framing_ends_reuse() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (mut gate, keeper) = new(server);
        client.write_all(b"Hzz\r\nGET / HTTP/1.1").await.unwrap();
        keeper.fill().await.unwrap();
        keeper.admit(&head(1, Framing::Chunked));
        drop(client);
        let got = drain_ready(&mut gate).await;
        assert_eq!(got, b"Hzz\r\nGET / HTTP/1.1");
        assert!(!keeper.request_done());
    }

    #[tokio::test]
    async fn shut_gate_reports_the_clients_close() {
        let (client, server) = tokio::io::duplex(64);
        let (mut gate, _keeper) = new(server);
        drop(client);
        let mut b = [0u8; 8];
        assert_eq!(gate.read(&mut b).await.unwrap(), 0);
    }
}
