//! The raw HTTP/1.1 client of both harnesses: one `GET`, the response head
//! checked, the body read and decoded by the caller.

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{Error, chunked::Chunked};

/// An HTTP/1.1 response body being read: head done, chunked or not.
pub(crate) struct Connection {
    socket: TcpStream,
    chunked: Option<Chunked>,
    /// Body bytes that arrived with the head.
    leftover: Vec<u8>,
}

impl Connection {
    /// Sends `GET path` to `127.0.0.1:port` and reads the response head,
    /// which must be a 200.
    pub(crate) async fn open(port: u16, path: &str) -> Result<Self, Error> {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).await?;
        socket.set_nodelay(true)?;
        // Reset on close: tens of thousands of connections per run must not
        // leave ephemeral ports in TIME_WAIT.
        socket.set_zero_linger()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n");
        socket.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(1024);
        // On the heap: the future of a connection being read stays small.
        let mut buf = vec![0u8; 4096];
        for _ in 0..64 {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                return Err("connection closed before the response head".into());
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                if !text.starts_with("http/1.1 200") {
                    return Err(format!("unexpected response: {text}").into());
                }
                let chunked = text.contains("transfer-encoding: chunked");
                return Ok(Self {
                    socket,
                    chunked: chunked.then(Chunked::default),
                    leftover: head[end + 4..].to_vec(),
                });
            }
        }
        Err("response head too long".into())
    }

    /// The body bytes that came with the head (empty after the first call).
    pub(crate) fn take_leftover(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.leftover)
    }

    /// Reads raw bytes from the socket (0 at its end).
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.socket.read(buf).await
    }

    /// Decodes raw body bytes, passing data to `out`; true once the body
    /// ended (its last chunk came).
    pub(crate) fn decode(&mut self, bytes: &[u8], out: &mut impl FnMut(&[u8])) -> bool {
        match &mut self.chunked {
            Some(chunked) => chunked.feed(bytes, out),
            None => {
                out(bytes);
                false
            }
        }
    }
}
