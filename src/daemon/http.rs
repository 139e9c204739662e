//! The metrics endpoint of `mount --metrics ADDR`: a minimal HTTP/1.1
//! server for `GET /metrics` (Prometheus' scrape), one connection at a
//! time, each bounded in size and time so that no client can hold the
//! thread. Anything else is answered 404 or 405.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use super::service::Service;

/// A request head longer than this is refused.
const MAX_HEAD: usize = 8 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

impl Service {
    /// Answer scrapes until the process ends.
    pub(crate) fn serve_metrics(&self, l: TcpListener) {
        for conn in l.incoming() {
            match conn {
                Ok(c) => {
                    if let Err(e) = self.answer(c) {
                        log::debug!("metrics: {e}");
                    }
                }
                Err(e) => {
                    log::warn!("metrics: accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn answer(&self, mut c: TcpStream) -> std::io::Result<()> {
        c.set_read_timeout(Some(TIMEOUT))?;
        c.set_write_timeout(Some(TIMEOUT))?;
        let head = match read_head(&mut c)? {
            Some(h) => h,
            None => return respond(&mut c, "431 Request Header Fields Too Large", "text/plain", b"too large\n"),
        };
        let line = head.lines().next().unwrap_or("");
        let mut parts = line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        match (method, path) {
            ("GET", "/metrics") | ("HEAD", "/metrics") => {
                let body = crate::ops::metrics::render(&self.status(false, true));
                let body = if method == "HEAD" { Vec::new() } else { body.into_bytes() };
                respond(&mut c, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &body)
            }
            ("GET", _) | ("HEAD", _) => respond(&mut c, "404 Not Found", "text/plain", b"see /metrics\n"),
            _ => respond(&mut c, "405 Method Not Allowed", "text/plain", b"GET /metrics\n"),
        }
    }
}

/// The request's head (up to the blank line), or None if it is too long.
fn read_head(c: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = c.read(&mut chunk)?;
        if n == 0 {
            // a client that sent a head without the blank line and closed
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn respond(c: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    c.write_all(body)?;
    c.flush()
}
