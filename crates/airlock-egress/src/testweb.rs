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
//! then the connection closes. Its threads live as long as the test's process.

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
