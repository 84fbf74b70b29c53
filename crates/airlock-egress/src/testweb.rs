//! HTTP and HTTPS servers for tests' "internets" (never the daemon's), on listeners the test
//! made (in a network namespace of its own, usually bound to every address there). Each answer
//! says where the request arrived and for what name, so a test can tell which address a proxy
//! really connected to:
//!
//! - `GET /bytes/N`: `N` bytes (a download to measure);
//! - anything else: `web-ok at=<address it arrived at> name=<Host, or the TLS server name>
//!   tls=<yes|no>`.
//!
//! HTTPS uses a self-signed certificate made at start (clients in tests do not verify it; the
//! proxy in between never sees inside). One thread per connection, HTTP/1.0 style: one request,
//! then the connection closes. Its threads live as long as the test's process. `TestProxy`
//! stands in for an operator's proxy.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

/// What a `TestWeb` serves on.
#[derive(Debug, Clone, Copy)]
pub struct TestWeb {
    pub http: std::net::SocketAddr,
    pub https: std::net::SocketAddr,
}

impl TestWeb {
    /// Starts serving HTTP on `http` and HTTPS on `https`.
    pub fn serve(http: TcpListener, https: TcpListener) -> std::io::Result<TestWeb> {
        let web = TestWeb {
            http: http.local_addr()?,
            https: https.local_addr()?,
        };
        let tls = Arc::new(server_config().map_err(std::io::Error::other)?);
        std::thread::spawn(move || {
            for c in http.incoming().flatten() {
                std::thread::spawn(move || {
                    let at = c
                        .local_addr()
                        .map(|a| a.ip().to_string())
                        .unwrap_or_default();
                    let _ = answer(c, &at, None, false);
                });
            }
        });
        std::thread::spawn(move || {
            for c in https.incoming().flatten() {
                let tls = tls.clone();
                std::thread::spawn(move || {
                    let at = c
                        .local_addr()
                        .map(|a| a.ip().to_string())
                        .unwrap_or_default();
                    let Ok(conn) = rustls::ServerConnection::new(tls) else {
                        return;
                    };
                    let mut s = rustls::StreamOwned::new(conn, c);
                    // The handshake, so the server name is known before the answer.
                    while s.conn.is_handshaking() {
                        if s.conn.complete_io(&mut s.sock).is_err() {
                            return;
                        }
                    }
                    let sni = s.conn.server_name().map(str::to_string);
                    let _ = answer(s, &at, sni, true);
                });
            }
        });
        Ok(web)
    }
}

fn server_config() -> Result<rustls::ServerConfig, String> {
    let ck = rcgen::generate_simple_self_signed(vec!["testweb.test".to_string()])
        .map_err(|e| e.to_string())?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .map_err(|e| e.to_string())
}

fn answer(
    mut s: impl Read + Write,
    at: &str,
    sni: Option<String>,
    tls: bool,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        let n = s.read(&mut b)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/");
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {n}\r\n\r\n")?;
        let chunk = vec![b'a'; 256 * 1024];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..k])?;
            left -= k as u64;
        }
        return s.flush();
    }
    let host = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("host").then(|| v.trim().to_string())
        })
        .or(sni)
        .unwrap_or_else(|| "-".into());
    let body = format!(
        "web-ok at={at} name={host} tls={}",
        if tls { "yes" } else { "no" }
    );
    write!(
        s,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

/// An operator's HTTP proxy for tests (a squid stand-in): `CONNECT host:port` tunnels and
/// absolute-form requests (`GET http://host/…`), names resolved from its own zone, connecting
/// from the test's process. It remembers each request line, so a test can tell what went
/// through it.
#[derive(Debug, Clone)]
pub struct TestProxy {
    pub addr: std::net::SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl TestProxy {
    pub fn serve(
        listener: TcpListener,
        zone: &[(&str, std::net::Ipv4Addr)],
    ) -> std::io::Result<TestProxy> {
        let p = TestProxy {
            addr: listener.local_addr()?,
            seen: Arc::default(),
        };
        let zone: Arc<Vec<(String, std::net::Ipv4Addr)>> =
            Arc::new(zone.iter().map(|(n, a)| (n.to_string(), *a)).collect());
        let seen = p.seen.clone();
        std::thread::spawn(move || {
            for c in listener.incoming().flatten() {
                let (zone, seen) = (zone.clone(), seen.clone());
                std::thread::spawn(move || {
                    let _ = proxy_one(c, &zone, &seen);
                });
            }
        });
        Ok(p)
    }

    /// The request lines it got (`CONNECT a.test:443 HTTP/1.1`, `GET http://a.test/ HTTP/1.1`).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn proxy_one(
    mut c: std::net::TcpStream,
    zone: &[(String, std::net::Ipv4Addr)],
    seen: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 || c.read(&mut b)? == 0 {
            return Ok(());
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let line = text.lines().next().unwrap_or("").to_string();
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(line.clone());
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (authority, connect) = if method == "CONNECT" {
        (target.to_string(), true)
    } else if let Some(rest) = target.strip_prefix("http://") {
        let a = rest.split('/').next().unwrap_or("");
        let a = if a.contains(':') {
            a.to_string()
        } else {
            format!("{a}:80")
        };
        (a, false)
    } else {
        c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(());
    };
    let (host, port) = authority.rsplit_once(':').unwrap_or((&authority, "80"));
    let addr = zone
        .iter()
        .find(|(n, _)| n == host)
        .map(|(_, a)| *a)
        .or_else(|| host.parse().ok());
    let (Some(addr), Ok(port)) = (addr, port.parse::<u16>()) else {
        c.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(());
    };
    let mut up = match std::net::TcpStream::connect((addr, port)) {
        Ok(u) => u,
        Err(_) => {
            c.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        }
    };
    if connect {
        c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    } else {
        up.write_all(&head)?;
    }
    let (mut c2, mut up2) = (c.try_clone()?, up.try_clone()?);
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut up2);
        let _ = up2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut up, &mut c);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
    Ok(())
}
