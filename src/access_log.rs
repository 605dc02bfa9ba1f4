//! The access log, off the request path: lines are appended to a shared buffer and written
//! by a thread of their own (SPEC section 14).
//!
//! A request formats its line straight into the buffer under a mutex (no write system call,
//! no allocation once the buffer has grown); the writer thread swaps the buffer out and
//! writes it whole at least every [`FLUSH_EVERY`], sooner once [`FLUSH_AT`] bytes are
//! waiting, and at once on [`AccessLog::flush`], which `graygate run` calls after Pingora's
//! graceful shutdown (`SIGTERM`) returns, so no line of a request Pingora finished is lost.
//! Dropping the last handle flushes too (the in-process test servers). The thread starts with
//! the first line (after `graygate run -d` has forked).
//!
//! Lines keep the form they had when they went through the `log` crate: env_logger's
//! `[{time} INFO  graygate::access] ` prefix, then the text or JSON line; `RUST_LOG` still
//! silences them (`graygate::access=off`). They go to stderr, like every other log line.
//!
//! Memory is bounded: past [`MAX_PENDING`] bytes waiting (a writer blocked on a full pipe),
//! lines are dropped and counted, and the writer reports the count when it catches up.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::config::AccessLogFormat;

/// The log target of the access log (`RUST_LOG=graygate::access=off` silences it).
pub const ACCESS_TARGET: &str = "graygate::access";

/// Lines wait at most this long before they are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Past this many bytes waiting the writer is woken at once.
pub const FLUSH_AT: usize = 256 * 1024;

/// Past this many bytes waiting, new lines are dropped (and counted).
pub const MAX_PENDING: usize = 64 * 1024 * 1024;

/// Where the writer thread writes.
pub type Sink = Box<dyn Write + Send>;

struct Pending {
    buf: Vec<u8>,
    /// Flushes asked for so far (a ticket count); the writer writes when it has not yet
    /// covered them all, then sets `flushed` to the count it covered.
    flush_asked: u64,
    stop: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer (a flush asked, the buffer past `FLUSH_AT`, stop).
    wake: Condvar,
    /// The flushes asked for that the writer has covered (written everything before them).
    flushed: Mutex<u64>,
    flushed_cv: Condvar,
    dropped: AtomicU64,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // A panic while formatting a line leaves a buffer that is still bytes.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The buffered access log; cheap to share (`Arc`).
pub struct AccessLog {
    format: AccessLogFormat,
    shared: Arc<Shared>,
    /// The sink until the writer thread takes it.
    sink: Mutex<Option<Sink>>,
    /// Started with the first line, not before: `graygate run -d` forks after the config is
    /// loaded, and a thread does not survive a fork.
    writer: OnceLock<Option<JoinHandle<()>>>,
}

impl AccessLog {
    /// An access log in `format` written to stderr.
    pub fn stderr(format: AccessLogFormat) -> Arc<AccessLog> {
        Self::new(format, Box::new(std::io::stderr()))
    }

    /// An access log in `format` written to `sink` by a thread of its own, started with the
    /// first line.
    pub fn new(format: AccessLogFormat, sink: Sink) -> Arc<AccessLog> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                flush_asked: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            flushed: Mutex::new(0),
            flushed_cv: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        Arc::new(AccessLog {
            format,
            shared,
            sink: Mutex::new(Some(sink)),
            writer: OnceLock::new(),
        })
    }

    fn start_writer(&self) {
        self.writer.get_or_init(|| {
            let sink = self.sink.lock().ok()?.take()?;
            let shared = Arc::clone(&self.shared);
            std::thread::Builder::new()
                .name("graygate-access-log".into())
                .spawn(move || write_loop(&shared, sink))
                .map_err(|e| log::error!("cannot start the access log writer: {e}"))
                .ok()
        });
    }

    /// The format lines are written in.
    pub fn format(&self) -> AccessLogFormat {
        self.format
    }

    /// Whether lines are written at all (not `off`, not silenced by `RUST_LOG`).
    pub fn enabled(&self) -> bool {
        self.format != AccessLogFormat::Off
            && log::log_enabled!(target: ACCESS_TARGET, log::Level::Info)
    }

    /// Appends one line: the prefix, what `line` writes, a newline.
    pub fn line(&self, line: impl FnOnce(&mut Vec<u8>)) {
        self.start_writer();
        let mut pending = self.shared.pending();
        if pending.buf.len() >= MAX_PENDING {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let buf = &mut pending.buf;
        let _ = write!(
            buf,
            "[{} INFO  {ACCESS_TARGET}] ",
            humantime::format_rfc3339_seconds(SystemTime::now())
        );
        line(buf);
        buf.push(b'\n');
        if buf.len() >= FLUSH_AT {
            self.shared.wake.notify_one();
        }
    }

    /// Writes every line appended so far and waits (at most 5 s) until it is written.
    pub fn flush(&self) {
        if !matches!(self.writer.get(), Some(Some(_))) {
            return;
        }
        let asked = {
            let mut pending = self.shared.pending();
            pending.flush_asked += 1;
            pending.flush_asked
        };
        self.shared.wake.notify_one();
        let flushed = self
            .shared
            .flushed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _ =
            self.shared
                .flushed_cv
                .wait_timeout_while(flushed, Duration::from_secs(5), |done| *done < asked);
    }

    /// Lines dropped because the writer fell [`MAX_PENDING`] bytes behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.pending().stop = true;
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.take().flatten() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: swaps the buffer out and writes it, until stopped (then once more).
fn write_loop(shared: &Shared, mut sink: Sink) {
    let mut out: Vec<u8> = Vec::new();
    let mut reported_dropped = 0;
    let mut covered = 0;
    loop {
        let (stop, asked) = {
            let pending = shared.pending();
            let (mut pending, _) = shared
                .wake
                .wait_timeout_while(pending, FLUSH_EVERY, |p| {
                    !p.stop && p.buf.len() < FLUSH_AT && p.flush_asked == covered
                })
                .unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut pending.buf, &mut out);
            (pending.stop, pending.flush_asked)
        };
        if !out.is_empty() {
            if let Err(e) = sink.write_all(&out).and_then(|()| sink.flush()) {
                // Nowhere else to say it than the error log; the lines are lost.
                log::warn!("access log: cannot write {} bytes: {e}", out.len());
            }
            // Keep the capacity for the next swap, but not a burst's worth for ever.
            out.clear();
            out.shrink_to(FLUSH_AT * 4);
        }
        let dropped = shared.dropped.load(Ordering::Relaxed);
        if dropped > reported_dropped {
            log::warn!(
                "access log: {} line(s) dropped, the writer fell {MAX_PENDING} bytes behind",
                dropped - reported_dropped
            );
            reported_dropped = dropped;
        }
        if asked > covered {
            covered = asked;
            let mut flushed = shared.flushed.lock().unwrap_or_else(|e| e.into_inner());
            *flushed = covered;
            shared.flushed_cv.notify_all();
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read, counting its writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut inner = self.0.lock().unwrap();
            inner.0.extend_from_slice(buf);
            inner.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().0.clone()).unwrap()
        }
        fn writes(&self) -> usize {
            self.0.lock().unwrap().1
        }
    }

    #[test]
    fn lines_are_written_in_batches_and_at_flush() {
        let sink = Captured::default();
        let log = AccessLog::new(AccessLogFormat::Text, Box::new(sink.clone()));
        for i in 0..1000 {
            log.line(|buf| {
                let _ = write!(buf, "line {i}");
            });
        }
        log.flush();
        log.line(|buf| buf.extend_from_slice(b"after"));
        log.flush();
        let text = sink.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1001, "a second flush waits too");
        assert!(lines[0].starts_with('[') && lines[0].ends_with(" INFO  graygate::access] line 0"));
        assert!(
            sink.writes() < 10,
            "{} writes for 1000 lines",
            sink.writes()
        );
    }

    #[test]
    fn lines_are_written_within_a_second_without_a_flush() {
        let sink = Captured::default();
        let log = AccessLog::new(AccessLogFormat::Json, Box::new(sink.clone()));
        log.line(|buf| buf.extend_from_slice(b"{}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.text().is_empty() {
            assert!(std::time::Instant::now() < deadline, "not written");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(sink.text().ends_with("] {}\n"));
    }

    #[test]
    fn dropping_the_log_writes_what_is_left() {
        let sink = Captured::default();
        let log = AccessLog::new(AccessLogFormat::Text, Box::new(sink.clone()));
        log.line(|buf| buf.extend_from_slice(b"last"));
        drop(log);
        assert!(sink.text().ends_with("] last\n"));
    }

    #[test]
    fn off_is_not_enabled_and_nothing_written_flushes_at_once() {
        let log = AccessLog::new(AccessLogFormat::Off, Box::new(Captured::default()));
        assert!(!log.enabled());
        log.flush();
        assert!(log.writer.get().is_none(), "no writer before a line");
    }
}
