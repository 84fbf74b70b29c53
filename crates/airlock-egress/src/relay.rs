//! Moving a proxied connection's bytes once the proxy has let it through.
//!
//! The kernel moves them: each direction is `splice(2)`d from one socket into a pipe and from
//! the pipe into the other, so the bytes never enter the daemon's memory. Each direction gets a
//! relay thread making blocking calls: a socket wakes its thread directly, with no readiness
//! event, runtime wake-up or second `splice` attempt in between (a median 8 % more throughput
//! than the same splicing on the async runtime, `benches/egress.rs`). At most
//! `EgressConfig::relay_threads` relay threads run (default [`MAX_THREADS`]); connections
//! beyond them are spliced on the runtime instead.
//!
//! A connection in flight is a [`Flight`], boarded on its sandbox's session: detaching the
//! sandbox lands every flight (both sockets shut down, which ends their relays at once, and its
//! destination recorded with the bytes so far), so no proxied connection outlives its sandbox
//! and none is missing from the final report.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::sys::socket::{shutdown, Shutdown};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::{lock, now_ms, Destination, Inner, Live};

/// Each direction's pipe, and the most one `splice` moves.
const BUF: usize = 1024 * 1024;
/// The most relay threads at once by default (two a connection).
pub const MAX_THREADS: usize = 1024;
/// A relay thread's stack: it only loops over two system calls.
const STACK: usize = 128 * 1024;

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Relay threads running now, in this process.
pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// A proxied connection in flight: its two sockets, the bytes each way so far, and its
/// destination, recorded once by whoever ends it (the relay, or the sandbox's detach).
pub(crate) struct Flight {
    ends: Ends,
    out: AtomicU64,
    inn: AtomicU64,
    unrecorded: Mutex<Option<Destination>>,
}

enum Ends {
    Threads(std::net::TcpStream, std::net::TcpStream),
    Runtime(TcpStream, TcpStream),
}

impl Ends {
    fn fds(&self) -> [BorrowedFd<'_>; 2] {
        match self {
            Ends::Threads(c, u) => [c.as_fd(), u.as_fd()],
            Ends::Runtime(c, u) => [c.as_fd(), u.as_fd()],
        }
    }
}

impl Flight {
    /// Ends both directions now: a relay blocked on either socket returns.
    fn shut(&self) {
        for fd in self.ends.fds() {
            let _ = shutdown(fd.as_raw_fd(), Shutdown::Both);
        }
    }

    /// Records its destination with the bytes so far, unless that was done. The lock is held
    /// until the record is in the session's file: a detach that finds this flight waits for it
    /// (and then finds it recorded) before it takes the file as final.
    fn record(&self, inner: &Inner, live: &Live) {
        let mut unrecorded = lock(&self.unrecorded);
        if let Some(mut d) = unrecorded.take() {
            d.bytes_out = self.out.load(Ordering::Relaxed);
            d.bytes_in = self.inn.load(Ordering::Relaxed);
            d.last_ms = now_ms();
            inner.record(live, d);
        }
        drop(unrecorded);
    }
}

/// The flights of one session; `closed` once its sandbox is detached (nothing boards after).
#[derive(Default)]
pub(crate) struct Flights {
    closed: bool,
    next: u64,
    on: HashMap<u64, Arc<Flight>>,
}

/// Takes off a session's flights for good: each is shut down and recorded with what it moved.
/// Called by `detach` before the session's file is final.
pub(crate) fn land_all(inner: &Inner, live: &Live) {
    let flights: Vec<Arc<Flight>> = {
        let mut f = lock(&live.flights);
        f.closed = true;
        f.on.drain().map(|(_, v)| v).collect()
    };
    for f in flights {
        f.shut();
        f.record(inner, live);
    }
}

/// Relays `client` and `up` both ways until both are done, `first` (bytes already read from
/// the client) ahead of the rest, then records `d` with the bytes each way (client to
/// destination, back), counted even when a side fails. Nothing is relayed for a session being
/// detached.
pub(crate) async fn relay(
    inner: &Inner,
    live: &Live,
    client: TcpStream,
    mut up: TcpStream,
    first: Vec<u8>,
    d: Destination,
) {
    if up.write_all(&first).await.is_err() {
        inner.record(live, d);
        return;
    }
    keepalive(&client);
    keepalive(&up);
    let threads = reserve(inner.relay_threads.load(Ordering::Relaxed));
    let ends = match threads {
        true => match (client.into_std(), up.into_std()) {
            (Ok(c), Ok(u))
                if c.set_nonblocking(false).is_ok() && u.set_nonblocking(false).is_ok() =>
            {
                Ends::Threads(c, u)
            }
            _ => {
                release(2);
                let mut d = d;
                d.bytes_out = first.len() as u64;
                inner.record(live, d);
                return;
            }
        },
        false => Ends::Runtime(client, up),
    };
    let flight = Arc::new(Flight {
        ends,
        out: AtomicU64::new(first.len() as u64),
        inn: AtomicU64::new(0),
        unrecorded: Mutex::new(Some(d)),
    });
    let id = {
        let mut f = lock(&live.flights);
        if f.closed {
            drop(f);
            if threads {
                release(2);
            }
            return;
        }
        f.next += 1;
        let id = f.next;
        f.on.insert(id, flight.clone());
        id
    };
    if threads {
        on_threads(&flight).await;
    } else {
        on_runtime(&flight).await;
    }
    // Recorded before it leaves the session's flights: a detach in between would otherwise
    // find neither the flight nor its record.
    flight.record(inner, live);
    lock(&live.flights).on.remove(&id);
}

/// A connection whose peer vanished (a microVM killed mid-transfer sends no FIN) ends within
/// minutes instead of holding its relay threads until the sandbox is detached: keepalive probes
/// after a minute of silence, and unacknowledged data given up after two.
fn keepalive(s: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(s, sockopt::KeepAlive, &true);
    let _ = setsockopt(s, sockopt::TcpKeepIdle, &60);
    let _ = setsockopt(s, sockopt::TcpKeepInterval, &15);
    let _ = setsockopt(s, sockopt::TcpKeepCount, &4);
    let _ = setsockopt(s, sockopt::TcpUserTimeout, &120_000);
}

/// Takes two relay threads when that keeps within `max`.
fn reserve(max: usize) -> bool {
    THREADS
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n + 2 <= max).then_some(n + 2)
        })
        .is_ok()
}

fn release(n: usize) {
    THREADS.fetch_sub(n, Ordering::AcqRel);
}

/// One relay thread a direction; returns when both have ended.
async fn on_threads(f: &Arc<Flight>) {
    let mut done = Vec::new();
    for up_dir in [true, false] {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let f2 = f.clone();
        let spawned = std::thread::Builder::new()
            .name("airlock-relay".into())
            .stack_size(STACK)
            .spawn(move || {
                let Ends::Threads(c, u) = &f2.ends else {
                    unreachable!("relay threads for a connection on the runtime")
                };
                let (from, to, n, what) = match up_dir {
                    true => (c, u, &f2.out, "client to destination"),
                    false => (u, c, &f2.inn, "destination to client"),
                };
                if let Err(e) = splice_blocking(from, to, n) {
                    tracing::debug!(error = %e, "a proxied connection, {what}");
                }
                let _ = shutdown(to.as_raw_fd(), Shutdown::Write);
                release(1);
                let _ = tx.send(());
            });
        match spawned {
            Ok(_) => done.push(rx),
            Err(e) => {
                // Out of threads: this connection ends (its other direction, if it started,
                // sees the shutdown).
                tracing::warn!(error = %e, "cannot start a relay thread for a proxied connection");
                release(1);
                f.shut();
            }
        }
    }
    for rx in done {
        let _ = rx.await;
    }
}

/// Moves what `from` sends to `to` until `from` ends (or either fails), adding to `n`:
/// blocking calls on blocking sockets.
fn splice_blocking(
    from: &std::net::TcpStream,
    to: &std::net::TcpStream,
    n: &AtomicU64,
) -> std::io::Result<()> {
    let (pr, pw) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE;
    loop {
        let got = splice(from, None, &pw, None, BUF, flags)?;
        if got == 0 {
            return Ok(());
        }
        let mut left = got;
        while left > 0 {
            match splice(&pr, None, to, None, left, flags)? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                k => {
                    left -= k;
                    n.fetch_add(k as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A pipe of [`BUF`] bytes (1 MiB is the unprivileged maximum by default; a smaller one when
/// the limit is lower still works).
fn pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let (pr, pw) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let _ = nix::fcntl::fcntl(
        pw.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(BUF as i32),
    );
    Ok((pr, pw))
}

/// Both directions on the runtime (readiness, then a non-blocking `splice`).
async fn on_runtime(f: &Flight) {
    let Ends::Runtime(client, up) = &f.ends else {
        unreachable!("a threaded connection on the runtime")
    };
    let up_dir = async {
        if let Err(e) = splice_async(client, up, &f.out).await {
            tracing::debug!(error = %e, "a proxied connection, client to destination");
        }
        let _ = shutdown(up.as_raw_fd(), Shutdown::Write);
    };
    let down_dir = async {
        if let Err(e) = splice_async(up, client, &f.inn).await {
            tracing::debug!(error = %e, "a proxied connection, destination to client");
        }
        let _ = shutdown(client.as_raw_fd(), Shutdown::Write);
    };
    tokio::join!(up_dir, down_dir);
}

/// [`splice_blocking`] for sockets on the runtime.
async fn splice_async(from: &TcpStream, to: &TcpStream, n: &AtomicU64) -> std::io::Result<()> {
    let (pr, pw) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let got = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from, None, &pw, None, BUF, flags).map_err(std::io::Error::from)
            }) {
                Ok(k) => break k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if got == 0 {
            return Ok(());
        }
        let mut left = got;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(&pr, None, to, None, left, flags).map_err(std::io::Error::from)
            }) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    left -= k;
                    n.fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
