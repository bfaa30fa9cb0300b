//! The pod's TCP acceptor: poem's, with `TCP_NODELAY` on every accepted
//! connection. Without it Nagle's algorithm holds a small write back while
//! an earlier one is unacknowledged, and the other side's delayed ACK can
//! make that up to 40 ms: a command written right after another to the same
//! daemon, or the next live event to a web client, would wait for it. Each
//! of those writes is a whole frame or response, so there is nothing to
//! gain from Nagle's coalescing.

use poem::{
    http::uri::Scheme,
    listener::{Acceptor, TcpAcceptor},
    web::{LocalAddr, RemoteAddr},
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Binds `addr` with a listen backlog of `backlog` (`TcpListener::bind`
/// always asks for 128).
pub fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Like `TcpListener::bind`: a restarted pod may bind its port at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

pub struct NoDelayAcceptor(TcpAcceptor);

impl NoDelayAcceptor {
    pub fn new(listener: TcpListener) -> std::io::Result<Self> {
        TcpAcceptor::from_tokio(listener).map(Self)
    }
}

impl Acceptor for NoDelayAcceptor {
    type Io = TcpStream;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.0.local_addr()
    }

    async fn accept(&mut self) -> std::io::Result<(TcpStream, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = self.0.accept().await?;
        if let Err(e) = io.set_nodelay(true) {
            // The connection still works, only with Nagle's delays.
            tracing::warn!(error = %e, "TCP_NODELAY not set on an accepted connection");
        }
        Ok((io, local, remote, scheme))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay_set() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut acceptor = NoDelayAcceptor::new(listener).unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (io, local, _, _) = acceptor.accept().await.unwrap();
        assert!(io.nodelay().unwrap());
        assert_eq!(local.as_socket_addr(), Some(&addr));
        client.await.unwrap().unwrap();
    }

    /// 300 clients connect while the pod accepts nothing (it is busy): the
    /// kernel completes every handshake. With `TcpListener::bind`'s 128 the
    /// SYNs past the 129th are dropped and retried only after a second.
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_backlog() {
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if somaxconn < 512 {
            // The kernel caps the backlog (kernels before 5.4 default to 128).
            eprintln!("skipped: net.core.somaxconn is {somaxconn}, below the 512 asked for");
            return;
        }
        let listener = bind("127.0.0.1:0".parse().unwrap(), 512).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..300).map(|_| TcpStream::connect(addr));
        let all = tokio::time::timeout(
            std::time::Duration::from_millis(900),
            futures_util::future::join_all(connects),
        )
        .await
        .expect("no SYN was dropped (a dropped one is retried after 1 s)");
        assert!(all.iter().all(|c| c.is_ok()));
        drop(listener);
    }
}
