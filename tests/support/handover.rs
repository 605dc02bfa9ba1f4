//! Hands listening sockets bound by the test to a graygate that starts in upgrade mode.
//!
//! Binding `127.0.0.1:0`, reading the port and releasing it before the server binds it again
//! leaves a window in which another process can take the port. So the test keeps the socket
//! and gives it to graygate instead. Pingora 0.9 has one way to take a listener that is bound
//! already: the graceful upgrade (pingora-core `server/bootstrap_services.rs`,
//! `server/transfer_fd/mod.rs`, `listeners/l4.rs`):
//!
//! 1. The test binds [`bind_loopback`] listeners, writes their addresses into graygate's
//!    config and calls [`Handover::start`] before it starts graygate.
//! 2. graygate starts with the upgrade flag (`RunOptions { upgrade: true, .. }`, or `graygate
//!    run -u`). In `Server::bootstrap()` Pingora listens on `server.upgrade_sock` and waits
//!    about 6 s for one connection carrying the listening fds (SCM_RIGHTS) and their bind
//!    addresses; it exits the process when none comes.
//! 3. The handover thread waits until `upgrade_sock` exists and sends the fds with
//!    [`Fds::send_to_sock`], exactly as an old graygate does on SIGQUIT.
//! 4. When a service listens on an address that is in the received table, Pingora uses that
//!    fd as it is instead of binding. The table is keyed by the string given to `add_tcp`,
//!    which graygate builds with `SocketAddr::to_string()`; the same is used here.
//!
//! The caller holds the listeners [`Handover::finish`] gives back until graygate answers on
//! them: had graygate bound the addresses itself instead (say, because a key did not match),
//! that bind would fail while the test's sockets are open, and the test would notice.
//!
//! The price is about a second per start: Pingora's bootstrap polls its non-blocking accept
//! once a second, and its first poll comes right after its listen(), before anyone can have
//! connected.

use std::io::Write as _;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use pingora::server::Fds;

/// A listener on `127.0.0.1` on a port the kernel chose, ready to be handed over.
pub fn bind_loopback() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    // Pingora turns the received fd into a tokio listener (`TcpSocket::from_std_stream`), which
    // must be non-blocking; the flag belongs to the socket, so the received copy has it too.
    // std's listener is already listening (backlog 128); Pingora calls listen() again to
    // raise the backlog, which Linux allows.
    listener
        .set_nonblocking(true)
        .expect("set the listener non-blocking");
    listener
}

/// Listeners on their way to a server that bootstraps in upgrade mode, sent from a thread so
/// that the server's bootstrap can wait for them meanwhile.
pub struct Handover {
    upgrade_sock: PathBuf,
    thread: Option<JoinHandle<Result<Vec<TcpListener>, String>>>,
}

impl Handover {
    /// Sends `listeners` to whatever opens `upgrade_sock` within `timeout`.
    pub fn start(listeners: Vec<TcpListener>, upgrade_sock: PathBuf, timeout: Duration) -> Self {
        let sock = upgrade_sock.clone();
        let thread = thread::Builder::new()
            .name("listener-handover".to_string())
            .spawn(move || send(listeners, &sock, timeout))
            .expect("spawn the listener handover thread");
        Handover {
            upgrade_sock,
            thread: Some(thread),
        }
    }

    /// Has the send ended (sent or given up)?
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the send to end and gives the listeners back; panics when it failed.
    pub fn finish(mut self) -> Vec<TcpListener> {
        let thread = self.thread.take().expect("the handover thread");
        let result = thread
            .join()
            .unwrap_or_else(|_| Err("the handover thread panicked".to_string()));
        result.unwrap_or_else(|why| {
            let why = format!(
                "could not hand the listeners over on {}: {why}",
                self.upgrade_sock.display()
            );
            // Straight to stderr, past the test harness's capture: an in-process server whose
            // bootstrap gets nothing exits the whole test binary, maybe before this panic is
            // reported.
            let _ = writeln!(std::io::stderr(), "{why}");
            panic!("{why}")
        })
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        // The thread ends by its own deadline; joined so no send outlives the test.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn send(
    listeners: Vec<TcpListener>,
    sock: &Path,
    timeout: Duration,
) -> Result<Vec<TcpListener>, String> {
    let deadline = Instant::now() + timeout;
    let path = sock
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", sock.display()))?;
    let mut fds = Fds::new();
    for listener in &listeners {
        let addr = listener
            .local_addr()
            .map_err(|e| format!("local_addr of a listener: {e}"))?;
        // The key graygate looks the listener up by: `add_tcp(&addr.to_string())`.
        fds.add(addr.to_string(), listener.as_raw_fd());
    }
    // `send_to_sock` retries a missing socket only five times, a second apart; wait for the
    // receiver here, to our own deadline, so the send usually goes at the first try.
    while !sock.exists() {
        if Instant::now() >= deadline {
            return Err(format!("nothing opened it within {timeout:?}"));
        }
        thread::sleep(Duration::from_millis(5));
    }
    // Between the receiver's bind() and listen() a connect is refused; `send_to_sock` retries
    // that a second later (at most five times), so this ends at most about 5 s past `deadline`.
    fds.send_to_sock(path)
        .map(|_| listeners)
        .map_err(|e| format!("sending the fds failed: {e}"))
}
