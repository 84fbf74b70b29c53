//! A minimal HTTP/1.1 client for the control APIs of Firecracker and Cloud Hypervisor, which both
//! serve JSON over a Unix socket (with micro-http): one request per connection, a JSON body or
//! none, a status and a body back. It can send descriptors with a request (`SCM_RIGHTS` on the
//! request's single `sendmsg`), which is how Cloud Hypervisor takes a tap that root opened.
//!
//! Every request is recorded (method, path, body) so that tests can validate the bodies against
//! the VMMs' published API descriptions. This module must never see a secret: the drivers only
//! send paths and sizes, and the JIT config travels on the config disk.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// Largest response accepted; the VMMs' answers are a few KiB (`vm.info` is the biggest).
const MAX_RESPONSE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API socket {} did not appear within {} ms", socket.display(), after.as_millis())]
    SocketMissing { socket: PathBuf, after: Duration },
    #[error("the VMM exited before its API socket {} appeared ({status})", socket.display())]
    Exited { socket: PathBuf, status: String },
    #[error("connecting to {} for {method} {path}", socket.display())]
    Connect {
        socket: PathBuf,
        method: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{method} {path} on {}", socket.display())]
    Io {
        socket: PathBuf,
        method: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{method} {path} on {}: no answer within {} ms", socket.display(), after.as_millis())]
    Timeout {
        socket: PathBuf,
        method: &'static str,
        path: String,
        after: Duration,
    },
    #[error("{method} {path} on {}: malformed response: {detail}", socket.display())]
    Malformed {
        socket: PathBuf,
        method: &'static str,
        path: String,
        detail: String,
    },
}

/// What can go wrong driving a Firecracker or Cloud Hypervisor VM, with the VM's id and the
/// step. A VMM's refusal carries its own explanation (`fault`).
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("VM {id}: invalid spec: {detail}")]
    Spec { id: String, detail: String },
    #[error("VM {id}: {what} {}", path.display())]
    Prepare {
        id: String,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("VM {id}: {what}: {detail}")]
    Tool {
        id: String,
        what: &'static str,
        detail: String,
    },
    #[error("VM {id}: cannot run {}", program.display())]
    Spawn {
        id: String,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("VM {id}: the VMM's API")]
    Api {
        id: String,
        #[source]
        source: ApiError,
    },
    #[error("VM {id}: {method} {path} was refused with {status}: {fault}")]
    Refused {
        id: String,
        method: &'static str,
        path: String,
        status: u16,
        fault: String,
    },
    #[error("VM {id}: cleaning up {}: {detail}", path.display())]
    Cleanup {
        id: String,
        path: PathBuf,
        detail: String,
    },
}

/// Sends one request and turns a non-2xx answer into [`VmmError::Refused`] with the VMM's fault.
pub async fn call(
    api: &ApiClient,
    id: &str,
    method: &'static str,
    path: &str,
    body: Option<&serde_json::Value>,
    fds: &[BorrowedFd<'_>],
) -> Result<Response, VmmError> {
    let r = api
        .send(method, path, body, fds)
        .await
        .map_err(|source| VmmError::Api {
            id: id.into(),
            source,
        })?;
    if r.is_success() {
        Ok(r)
    } else {
        Err(VmmError::Refused {
            id: id.into(),
            method,
            path: path.into(),
            status: r.status,
            fault: r.fault(),
        })
    }
}

/// Checks a VM id: what both VMMs and the jailer accept as a name (`[A-Za-z0-9-]`, 1 to 64).
pub fn check_vm_id(id: &str) -> Result<(), VmmError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(VmmError::Spec {
            id: id.into(),
            detail: "the id must be 1 to 64 of A-Z, a-z, 0-9 and '-'".into(),
        });
    }
    Ok(())
}

/// Creates `path` as a sparse raw disk of `gib` GiB holding an empty ext4 (the guest's writable
/// layer), owned by `uid` with mode 0600. Lazy init keeps it sparse: a few MiB on the host.
pub fn make_scratch_disk(id: &str, path: &Path, gib: u64, uid: u32) -> Result<(), VmmError> {
    use std::os::unix::fs::OpenOptionsExt;
    let prep = |what, source| VmmError::Prepare {
        id: id.into(),
        what,
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| prep("creating the scratch disk", e))?;
    f.set_len(gib.max(1) << 30)
        .map_err(|e| prep("sizing the scratch disk", e))?;
    drop(f);
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| VmmError::Tool {
            id: id.into(),
            what: "mkfs.ext4 (apt-get install e2fsprogs)",
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(VmmError::Tool {
            id: id.into(),
            what: "mkfs.ext4",
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    own(path, uid).map_err(|e| prep("chown of the scratch disk", e))
}

/// Makes `p` the VM's own: owner and group `uid`, mode 0600.
pub fn own(p: &Path, uid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    nix::unistd::chown(
        p,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
    )
    .map_err(std::io::Error::from)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
}

/// Puts the file `src` at `dst` for a VMM running as `uid`: a hard link when `src` is readable
/// by everyone (an image's shared read-only files: the link keeps their owner and mode, since an
/// inode shared with the image store must never be chowned), else a copy owned by `uid`, 0600.
pub fn link_or_copy(id: &str, src: &Path, dst: &Path, uid: u32) -> Result<(), VmmError> {
    use std::os::unix::fs::MetadataExt;
    let prep = |what, source| VmmError::Prepare {
        id: id.into(),
        what,
        path: src.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(src).map_err(|e| prep("reading", e))?;
    if !meta.is_file() {
        return Err(prep("not a file:", std::io::ErrorKind::InvalidInput.into()));
    }
    if meta.mode() & 0o004 != 0 && std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, dst).map_err(|e| prep("copying", e))?;
    own(dst, uid).map_err(|e| prep("chown of the copy of", e))
}

/// The VMM's exit, once it has one: for `wait_ready`.
pub fn exited(child: &mut tokio::process::Child) -> Option<String> {
    match child.try_wait() {
        Ok(Some(st)) => Some(st.to_string()),
        Ok(None) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// SIGKILLs the VMM and reaps it (at most 5 s: KVM teardown of a large guest takes a moment).
pub async fn kill_child(child: &mut tokio::process::Child) {
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

/// Removes a directory tree; succeeds if it is gone.
pub fn remove_tree(id: &str, dir: &Path) -> Result<(), VmmError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(VmmError::Cleanup {
            id: id.into(),
            path: dir.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// The longest path `connect(2)` takes for a Unix socket (`sun_path` is 108 bytes, NUL included).
pub const SUN_PATH_MAX: usize = 107;

/// A path to the socket at `path` that fits `sun_path`: `path` itself when it is short enough,
/// else `/proc/self/fd/N/NAME`, N a descriptor of its directory (returned: it must stay open
/// while the path is used), which the kernel resolves like the long path itself. A jail deep in
/// a state directory has such a long path.
fn addressable(path: &Path) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    use std::os::unix::ffi::OsStrExt;
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if path.as_os_str().as_bytes().len() > SUN_PATH_MAX => {
            // A directory opens read-only like a file; the descriptor only anchors the path.
            let dir = std::fs::File::open(dir)?;
            let short = Path::new("/proc/self/fd")
                .join(std::os::fd::AsRawFd::as_raw_fd(&dir).to_string())
                .join(name);
            Ok((short, Some(dir)))
        }
        _ => Ok((path.to_path_buf(), None)),
    }
}

/// Connects to the socket at `path`, however long the path (see [`addressable`]).
async fn connect(path: &Path) -> std::io::Result<UnixStream> {
    let (addr, _anchor) = addressable(path)?;
    UnixStream::connect(&addr).await
}

/// Binds a listening Unix socket at `path` (for a VMM to inherit), however long the path.
pub fn bind(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    let (addr, _anchor) = addressable(path)?;
    std::os::unix::net::UnixListener::bind(&addr)
}

/// One request as sent: what the tests validate against the API descriptions.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The VMM's own explanation of a failure: Firecracker's `fault_message`, Cloud Hypervisor's
    /// JSON list of error causes (joined), or the raw body.
    pub fn fault(&self) -> String {
        match serde_json::from_str::<serde_json::Value>(&self.body) {
            Ok(serde_json::Value::Object(o)) => match o.get("fault_message") {
                Some(serde_json::Value::String(m)) => m.clone(),
                _ => self.body.trim().to_string(),
            },
            Ok(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(": "),
            _ => self.body.trim().to_string(),
        }
    }
}

/// A client for one VMM's API socket, with the log of everything sent through it.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> ApiClient {
        ApiClient {
            socket: socket.into(),
            timeout,
            log: Arc::default(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Every request sent so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until the socket accepts a connection, for at most `deadline`; gives up early with
    /// the exit status when `exited` reports that the VMM is gone.
    pub async fn wait_ready(
        &self,
        deadline: Duration,
        mut exited: impl FnMut() -> Option<String>,
    ) -> Result<(), ApiError> {
        let start = Instant::now();
        loop {
            if connect(&self.socket).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = exited() {
                return Err(ApiError::Exited {
                    socket: self.socket.clone(),
                    status,
                });
            }
            if start.elapsed() >= deadline {
                return Err(ApiError::SocketMissing {
                    socket: self.socket.clone(),
                    after: deadline,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Result<Response, ApiError> {
        self.send("GET", path, None, &[]).await
    }

    pub async fn put(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, ApiError> {
        self.send("PUT", path, body, &[]).await
    }

    pub async fn patch(&self, path: &str, body: &serde_json::Value) -> Result<Response, ApiError> {
        self.send("PATCH", path, Some(body), &[]).await
    }

    /// Sends one request, with `fds` attached to its bytes as `SCM_RIGHTS`, and reads the answer.
    pub async fn send(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&serde_json::Value>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Response, ApiError> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Recorded {
                method: method.into(),
                path: path.into(),
                body: body.cloned(),
            });
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        match tokio::time::timeout(self.timeout, self.exchange(method, path, body, &raw)).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Timeout {
                socket: self.socket.clone(),
                method,
                path: path.into(),
                after: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&serde_json::Value>,
        fds: &[RawFd],
    ) -> Result<Response, ApiError> {
        let io = |source| ApiError::Io {
            socket: self.socket.clone(),
            method,
            path: path.into(),
            source,
        };
        let mut stream = connect(&self.socket)
            .await
            .map_err(|source| ApiError::Connect {
                socket: self.socket.clone(),
                method,
                path: path.into(),
                source,
            })?;
        let request = encode(method, path, body);
        if fds.is_empty() {
            stream.write_all(&request).await.map_err(io)?;
        } else {
            send_with_fds(&stream, &request, fds).await.map_err(io)?;
        }
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(r) = parse(&buf).map_err(|detail| self.malformed(method, path, detail))? {
                return Ok(r);
            }
            if buf.len() > MAX_RESPONSE {
                return Err(self.malformed(method, path, "larger than 1 MiB".into()));
            }
            let n = stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                return Err(self.malformed(
                    method,
                    path,
                    format!("connection closed after {} bytes", buf.len()),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn malformed(&self, method: &'static str, path: &str, detail: String) -> ApiError {
        ApiError::Malformed {
            socket: self.socket.clone(),
            method,
            path: path.into(),
            detail,
        }
    }
}

fn encode(method: &str, path: &str, body: Option<&serde_json::Value>) -> Vec<u8> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    // micro-http wants a length on every request with a body; 0 on the others is accepted.
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The whole request in one `sendmsg`, the descriptors attached: micro-http takes them from the
/// read that returns the request's first bytes.
async fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        stream.writable().await?;
        // The descriptors go with the first bytes only.
        let with: &[RawFd] = if sent == 0 { fds } else { &[] };
        match stream.try_io(Interest::WRITABLE, || {
            scm::sendmsg(stream.as_raw_fd(), &bytes[sent..], with)
        }) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

mod scm {
    //! `sendmsg(2)` with an `SCM_RIGHTS` control message: the one unsafe call of this module
    //! (the workspace's nix is built without its socket feature, which would pull in another
    //! crate for this alone).
    #![allow(unsafe_code)]

    use std::os::fd::RawFd;

    use nix::libc;

    /// Sends `bytes` on the socket `sock` with `fds` attached (none: a plain send).
    pub(super) fn sendmsg(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
        let data_len = std::mem::size_of_val(fds);
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
        // u64 cells: the control buffer must be aligned for `cmsghdr`.
        let mut control = vec![0u64; space.div_ceil(8)];
        // SAFETY: an all-zero msghdr is a valid empty message.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            // SAFETY: msg_control points at `space` zeroed, aligned bytes, which hold one
            // cmsghdr with `data_len` bytes of data (CMSG_SPACE said so), so CMSG_FIRSTHDR is
            // non-null and CMSG_DATA has room for every descriptor.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr() as *const u8,
                    libc::CMSG_DATA(c),
                    data_len,
                );
            }
        }
        // SAFETY: msg, its iovec and its control buffer outlive the call; the kernel only reads
        // them. MSG_NOSIGNAL: a closed peer is an error, not a SIGPIPE.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// A complete response from the bytes read so far, `None` if more are needed.
fn parse(buf: &[u8]) -> Result<Option<Response>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "headers are not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next());
    if !version.starts_with("HTTP/1.") {
        return Err(format!("status line {status_line:?}"));
    }
    let status: u16 = code
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    let mut length = 0usize;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("Content-Length {:?}", v.trim()))?;
            } else if k.trim().eq_ignore_ascii_case("transfer-encoding") {
                return Err(format!("unsupported Transfer-Encoding {:?}", v.trim()));
            }
        }
    }
    let body = &buf[end + 4..];
    if body.len() < length {
        return Ok(None);
    }
    Ok(Some(Response {
        status,
        body: String::from_utf8_lossy(&body[..length]).into_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_a_length_and_json_only_with_a_body() {
        let with = encode("PUT", "/actions", Some(&serde_json::json!({"a": 1})));
        let with = String::from_utf8(with).unwrap();
        assert!(with.starts_with("PUT /actions HTTP/1.1\r\n"));
        assert!(
            with.contains("Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}")
        );
        let without = String::from_utf8(encode("GET", "/", None)).unwrap();
        assert!(without.ends_with("Content-Length: 0\r\n\r\n"));
        assert!(!without.contains("Content-Type"));
    }

    #[test]
    fn responses_parse_only_when_complete() {
        let full = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"fault_message\":\"no\"}";
        for cut in [0, 10, full.len() - 1] {
            assert_eq!(parse(&full[..cut]).unwrap(), None, "{cut}");
        }
        let r = parse(full).unwrap().unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.fault(), "no");
        let r = parse(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap();
        assert!(r.is_success() && r.body.is_empty());
        assert!(parse(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn cloud_hypervisor_faults_are_joined() {
        let r = Response {
            status: 500,
            body: r#"["Error from API","The VM could not boot"]"#.into(),
        };
        assert_eq!(r.fault(), "Error from API: The VM could not boot");
    }

    #[tokio::test]
    async fn a_socket_deeper_than_sun_path_holds_is_reached() {
        let t = tempfile::tempdir().unwrap();
        let deep = t
            .path()
            .join("d".repeat(60))
            .join("e".repeat(60))
            .join("run");
        std::fs::create_dir_all(&deep).unwrap();
        let sock = deep.join("fc.sock");
        assert!(
            sock.as_os_str().len() > SUN_PATH_MAX,
            "the test needs a long path"
        );
        // Bound through a short path to the same place, as a VMM in its chroot binds it.
        let anchor = std::fs::File::open(&deep).unwrap();
        let short = format!(
            "/proc/self/fd/{}/fc.sock",
            std::os::fd::AsRawFd::as_raw_fd(&anchor)
        );
        let listener = tokio::net::UnixListener::bind(&short).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
                .await
                .unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
        });
        assert!(
            UnixStream::connect(&sock).await.is_err(),
            "positive control: the plain connect cannot take this path"
        );
        let c = ApiClient::new(&sock, Duration::from_secs(5));
        let r = c.put("/actions", None).await.unwrap();
        assert_eq!(r.status, 204);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn errors_name_the_socket_and_the_path() {
        let t = tempfile::tempdir().unwrap();
        let c = ApiClient::new(t.path().join("none.sock"), Duration::from_millis(200));
        let e = c
            .put("/machine-config", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("none.sock") && e.contains("PUT /machine-config"),
            "{e}"
        );
        let e = c
            .wait_ready(Duration::from_millis(30), || None)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.sock") && e.contains("30 ms"), "{e}");
        assert_eq!(c.requests().len(), 1, "failed requests are recorded too");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("s.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        let _held = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let c = ApiClient::new(&sock, Duration::from_millis(100));
        let e = c.get("/").await.unwrap_err();
        assert!(matches!(e, ApiError::Timeout { .. }), "{e}");
    }
}
