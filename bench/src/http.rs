//! A minimal HTTP/1.1 keep-alive client that counts every byte on the wire (request line, headers,
//! body; status line, headers, body), which is what the byte targets are about.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// Bytes and round trips spent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    /// Bytes sent (headers + body).
    pub up: usize,
    /// Bytes received (headers + body).
    pub down: usize,
    /// Requests made.
    pub trips: usize,
}

impl Traffic {
    /// Total bytes both ways.
    pub fn total(&self) -> usize {
        self.up + self.down
    }
}

impl std::ops::AddAssign for Traffic {
    fn add_assign(&mut self, o: Traffic) {
        self.up += o.up;
        self.down += o.down;
        self.trips += o.trips;
    }
}

/// One keep-alive connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
    /// `Authorization` header value sent with every request (counted in the traffic, like any
    /// header: a device pays for it on every request).
    auth: String,
}

impl Conn {
    /// Connect to `127.0.0.1:port`, authenticating with the device token `token`.
    pub fn open(port: u16, token: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            host: format!("127.0.0.1:{port}"),
            auth: format!("Bearer {token}"),
        })
    }

    /// Send a request; returns (status, body, traffic).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>, Traffic)> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n",
            self.host, self.auth
        );
        if let Some(ct) = content_type {
            head.push_str(&format!(
                "Content-Type: {ct}\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        self.writer.write_all(head.as_bytes())?;
        self.writer.write_all(body)?;
        let mut traffic = Traffic {
            up: head.len() + body.len(),
            down: 0,
            trips: 1,
        };

        let mut line = String::new();
        traffic.down += self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            let n = self.reader.read_line(&mut line)?;
            traffic.down += n;
            if n == 0 || line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        traffic.down += length;
        Ok((status, body, traffic))
    }
}
