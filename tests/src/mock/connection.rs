//! A TCP listener whose connections a handler can cut, for `Failure::Disconnect` and
//! `Failure::Timeout`: axum gives handlers no socket, so each connection carries a kill switch
//! that the handler reaches through `ConnectInfo<Conn>`. Once killed, every read and write on
//! the connection fails, hyper drops it, and the client sees the connection close without a
//! byte of response.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub(crate) struct MockListener(pub(crate) TcpListener);

/// One accepted connection, as handlers see it.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    killed: Arc<AtomicBool>,
}

impl Conn {
    /// Cut the connection: the response being answered is never written.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
    }
}

pub(crate) struct MockIo {
    stream: TcpStream,
    killed: Arc<AtomicBool>,
}

impl MockIo {
    fn check(&self) -> io::Result<()> {
        if self.killed.load(Ordering::Acquire) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection cut by the mock provider",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for MockIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for MockIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Listener for MockListener {
    type Io = MockIo;
    type Addr = Conn;

    async fn accept(&mut self) -> (MockIo, Conn) {
        loop {
            match self.0.accept().await {
                Ok((stream, _)) => {
                    // Small SSE events must leave at once, not wait for Nagle.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "could not set TCP_NODELAY");
                    }
                    let killed = Arc::new(AtomicBool::new(false));
                    let conn = Conn {
                        killed: Arc::clone(&killed),
                    };
                    return (MockIo { stream, killed }, conn);
                }
                // Per-connection errors (the peer gave up early) do not affect the listener.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionRefused
                    ) => {}
                // Typically out of file descriptors: back off instead of spinning.
                Err(error) => {
                    tracing::warn!(%error, "mock provider accept failed, retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Conn> {
        self.0.local_addr().map(|_| Conn {
            killed: Arc::new(AtomicBool::new(false)),
        })
    }
}

impl Connected<IncomingStream<'_, MockListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, MockListener>) -> Conn {
        stream.remote_addr().clone()
    }
}

/// The address to reach a listener bound to `bound` (0.0.0.0 is reached via 127.0.0.1).
pub(crate) fn reachable(bound: SocketAddr) -> SocketAddr {
    let mut addr = bound;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}
