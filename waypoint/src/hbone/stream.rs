//! One HBONE CONNECT stream as an `AsyncRead + AsyncWrite` byte stream, usable by tokio code and,
//! as a Pingora virtual socket, by the HTTP proxy.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest DATA payload we queue per write; bounds memory per stream.
const MAX_WRITE: usize = 256 * 1024;

/// Decrements a counter when the stream goes away (pool stream accounting).
#[derive(Debug)]
pub(crate) struct StreamGuard(pub(crate) Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The two halves of a CONNECT stream.
pub struct H2Stream {
    send: SendStream<Bytes>,
    /// Taken by `Drop` to finish the stream in the background.
    recv: Option<RecvStream>,
    /// Received but not yet read.
    pending: Bytes,
    write_closed: bool,
    _guard: Option<StreamGuard>,
}

impl fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl H2Stream {
    /// Wraps the halves of a CONNECT stream whose `200` has been sent or received.
    pub fn from_parts(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self::new(send, recv, None)
    }

    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<StreamGuard>,
    ) -> Self {
        H2Stream {
            send,
            recv: Some(recv),
            pending: Bytes::new(),
            write_closed: false,
            _guard: guard,
        }
    }

    /// Waits until at least `n` bytes are buffered (fewer when the peer ends the stream first) and
    /// returns them without consuming them.
    pub async fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.pending.len() < n {
            let before = std::mem::take(&mut self.pending);
            std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
            if self.pending.is_empty() {
                self.pending = before;
                break;
            }
            if !before.is_empty() {
                let mut joined = bytes::BytesMut::with_capacity(before.len() + self.pending.len());
                joined.extend_from_slice(&before);
                joined.extend_from_slice(&self.pending);
                self.pending = joined.freeze();
            }
        }
        Ok(&self.pending)
    }

    /// Abandons the stream with `reason` (a denied TCP connection, a failed upstream).
    pub fn reset(&mut self, reason: h2::Reason) {
        self.send.send_reset(reason);
        self.write_closed = true;
        self.recv = None;
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(recv) = self.recv.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            match ready!(recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(b)) => {
                    // Return the window as soon as a frame is buffered: at most one frame per
                    // stream is held here, so the peer cannot make us buffer more.
                    let _ = recv.flow_control().release_capacity(b.len());
                    if b.is_empty() {
                        continue;
                    }
                    self.pending = b;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
            }
        }
    }
}

impl Drop for H2Stream {
    /// Closes like a socket: END_STREAM for our side, then the peer gets time to end its side.
    /// Dropping an open stream would make h2 reset it, and a reset can overtake the response
    /// still queued for the peer.
    fn drop(&mut self) {
        if !self.write_closed {
            let _ = self.send.send_data(Bytes::new(), true);
        }
        if let Some(recv) = self.recv.take()
            && !recv.is_end_stream()
        {
            drain_later(recv);
        }
    }
}

/// Reads and discards what the peer still sends, for at most a few seconds, then lets h2 close
/// the stream.
pub(crate) fn drain_later(mut recv: RecvStream) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(Ok(b)) = recv.data().await {
                let _ = recv.flow_control().release_capacity(b.len());
            }
        })
        .await;
    });
}

pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("h2 i/o error"))
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            ready!(this.poll_fill(cx))?;
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.send.reserve_capacity(buf.len().min(MAX_WRITE));
        loop {
            match ready!(this.send.poll_capacity(cx)) {
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(buf.len());
                    this.send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(h2_to_io)?;
                    return Poll::Ready(Ok(n));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes from its connection task; nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            // END_STREAM is the half-close: the peer reads EOF, its direction stays open.
            this.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl VirtualSocket for H2Stream {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        // No socket: Nagle and keep-alive belong to the HBONE connection underneath.
        Ok(())
    }
}
