//! The `api` scenario's lean HTTP/1.1 client: one keep-alive connection,
//! one request at a time, written as one buffer and read back with
//! `httparse` — what `wrk` does, without a connection pool, a dispatch task
//! or a second thread per request. A general client (reqwest, kept as
//! `--http-client reqwest`) spent ~2.4 CPU s per 100k requests of the
//! two-core machine the servers also run on; see bench/RESULTS.md.

use std::{io, net::SocketAddr};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Largest response head accepted (status line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body accepted (the API's answers are small).
const MAX_BODY: usize = 1024 * 1024;

/// One keep-alive connection to `addr`.
pub struct Conn {
    stream: TcpStream,
    host: String,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            host: addr.to_string(),
            request: Vec::with_capacity(512),
            buf: Vec::with_capacity(4096),
        })
    }

    /// POSTs `body` (JSON) to `path` with `headers`; returns the status
    /// code once the whole response is read. Any error leaves the
    /// connection unusable (the caller connects again).
    pub async fn post_json(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<u16> {
        use std::io::Write as _;
        self.request.clear();
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            self.host,
            body.len()
        )?;
        for (name, value) in headers {
            write!(self.request, "{name}: {value}\r\n")?;
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> io::Result<u16> {
        self.buf.clear();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf).map_err(invalid)? {
                httparse::Status::Complete(head) => {
                    let status = response.code.unwrap_or(0);
                    let framing = framing(response.headers)?;
                    self.read_body(head, framing).await?;
                    return Ok(status);
                }
                httparse::Status::Partial if self.buf.len() >= MAX_HEAD => {
                    return Err(invalid("response head too long"));
                }
                httparse::Status::Partial => self.fill().await?,
            }
        }
    }

    /// Reads until `buf` holds the body after `head` as `framing` says,
    /// and nothing more (one request at a time: no pipelined bytes).
    async fn read_body(&mut self, head: usize, framing: Framing) -> io::Result<()> {
        match framing {
            Framing::Length(n) if n > MAX_BODY => Err(invalid("response body too long")),
            Framing::Length(n) => {
                while self.buf.len() < head + n {
                    self.fill().await?;
                }
                if self.buf.len() > head + n {
                    return Err(invalid("bytes after the response"));
                }
                Ok(())
            }
            Framing::Chunked => {
                // Small bodies only: read until the last chunk and trailer end.
                while !self.buf[head..].ends_with(b"0\r\n\r\n") {
                    if self.buf.len() - head > MAX_BODY {
                        return Err(invalid("response body too long"));
                    }
                    self.fill().await?;
                }
                Ok(())
            }
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
}

fn framing(headers: &[httparse::Header<'_>]) -> io::Result<Framing> {
    let mut framing = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| invalid("bad content-length"))?;
            framing = Some(Framing::Length(n));
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            && h.value.eq_ignore_ascii_case(b"chunked")
        {
            return Ok(Framing::Chunked);
        } else if h.name.eq_ignore_ascii_case("connection")
            && h.value.eq_ignore_ascii_case(b"close")
        {
            return Err(invalid("the server closes the connection"));
        }
    }
    framing.ok_or_else(|| invalid("response without content-length"))
}

fn invalid<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncBufReadExt as _, net::TcpListener};

    use super::*;

    /// A server answering each request with the next of `answers`,
    /// written in two pieces to exercise partial reads: the head and the
    /// body's first byte, then the rest (or two halves, without a body).
    async fn server(answers: Vec<&'static str>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut socket = tokio::io::BufReader::new(socket);
            for answer in answers {
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    socket.read_line(&mut line).await.unwrap();
                    if let Some(v) = line.strip_prefix("content-length: ") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                socket.read_exact(&mut body).await.unwrap();
                assert_eq!(body, b"{\"a\":1}");
                let cut = answer
                    .find("\r\n\r\n")
                    .map(|head| head + 5)
                    .filter(|&cut| cut < answer.len())
                    .unwrap_or(answer.len() / 2);
                let (one, two) = answer.split_at(cut);
                socket.get_mut().write_all(one.as_bytes()).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                socket.get_mut().write_all(two.as_bytes()).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn keep_alive_requests_read_lengths_and_chunks() {
        let addr = server(vec![
            "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 11\r\n\r\n{\"e\":\"no\"}\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            // Last, so a body left unread above would be taken for its head.
            "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
        ])
        .await;
        let mut conn = Conn::connect(addr).await.unwrap();
        for want in [202, 404, 200, 202] {
            let got = conn
                .post_json("/x", &[("x-api-key", "k")], b"{\"a\":1}")
                .await
                .unwrap();
            assert_eq!(got, want);
        }
    }

    #[tokio::test]
    async fn a_connection_closed_midway_is_an_error() {
        let addr = server(vec![
            "HTTP/1.1 202 Accepted\r\ncontent-length: 10\r\n\r\nab",
        ])
        .await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let e = conn.post_json("/x", &[], b"{\"a\":1}").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn framing_is_read_from_the_headers() {
        let h = |name, value| httparse::Header { name, value };
        assert_eq!(
            framing(&[h("Content-Length", b"12")]).unwrap(),
            Framing::Length(12)
        );
        assert_eq!(
            framing(&[h("Transfer-Encoding", b"chunked")]).unwrap(),
            Framing::Chunked
        );
        assert!(framing(&[]).is_err());
        assert!(framing(&[h("content-length", b"x")]).is_err());
        assert!(framing(&[h("content-length", b"0"), h("connection", b"close")]).is_err());
    }
}
