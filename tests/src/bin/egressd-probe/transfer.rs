//! The client end of the byte-exact transfers (`tests/e2e/transfer.rs`; the protocol, the
//! pattern and the pump are `egressd_tests::transfer`'s).
//!
//! ```text
//! transfer ADDR:PORT SNI UP DOWN [--slow-read-ms N] [--reset-after BYTES] [--no-shutdown] [--eager]
//!          [--idle-ms N]
//!     one connection: a rustls ClientHello for SNI; the server's greeting (8 bytes); DOWN
//!     (8 bytes, big-endian), then UP bytes of the pattern while DOWN bytes are read and
//!     checked; shutdown(Write) once UP is sent (not with --no-shutdown: then the socket is
//!     closed after the server's end-of-file); read until end-of-file. --eager sends DOWN
//!     and UP right behind the ClientHello, without waiting for the greeting (which is then
//!     checked as the first 8 bytes read). --slow-read-ms pauses N ms after each 64 KiB
//!     read; --reset-after resets the connection (SO_LINGER 0) once BYTES of UP are sent.
//!     The line: `local` (the client's address, as the proxy's audit record shows it),
//!     `hello_len`, `up`, `down`, `sent`, `received` (DOWN bytes, the greeting not counted),
//!     `received_ok`, `first_bad` (the offset of the first wrong byte after the ClientHello's
//!     greeting, or within it for --eager), `first_bad_origin` (where the word holding it
//!     belongs in the pattern, when it is one of its words: bytes misplaced),
//!     `first_bad_bytes` (up to 16 bytes from there on, in hex), `end` (how reading ended: `eof`, `reset`,
//!     `aborted`, `timeout`, `error: ...`), `write_end` (`done`, `aborted`, `error: ...`),
//!     `sent_at_eof` (UP bytes sent when the server's end-of-file came), `elapsed_ms`, and
//!     `intact` (everything sent and received, checked, both ends clean)
//! transfers ADDR:PORT SNI COUNT CONCURRENCY UP DOWN
//!     COUNT such transfers, CONCURRENCY at a time; the line counts the `intact` ones (`ok`)
//!     and the others (`failed`, with `first_failure`), with `hello_len` and `elapsed_ms`
//! ```
//!
//! A transfer gives up after 30 s without progress (20 s in `transfers`); connects and the
//! wait for the greeting time out after 5 s.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use egressd_tests::transfer::{Outcome, Plan, SEED_DOWN, SEED_UP, client_hello, greeting, pump};

use crate::{
    json::Json,
    net::{TIMEOUT, resolve},
};

/// `transfer`'s flags (see the module doc), as given.
pub struct Flags {
    pub slow_read_ms: Option<String>,
    pub reset_after: Option<String>,
    pub no_shutdown: bool,
    pub eager: bool,
    pub idle_ms: Option<String>,
}

/// `transfer`: see the module doc.
pub fn transfer(target: &str, sni: &str, up: &str, down: &str, flags: &Flags) -> Json {
    let mut out = Json::new("transfer", target);
    let (Ok(up), Ok(down)) = (up.parse::<u64>(), down.parse::<u64>()) else {
        return out.failed("parse", "transfer needs SNI UP DOWN (byte counts)");
    };
    let slow_read = match flags.slow_read_ms.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(ms)) => Some(Duration::from_millis(ms)),
        Some(Err(_)) => return out.failed("parse", "--slow-read-ms needs milliseconds"),
    };
    let reset_after = match flags.reset_after.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return out.failed("parse", "--reset-after needs a byte count"),
    };
    let idle = match flags.idle_ms.as_deref().map(str::parse::<u64>) {
        None => Duration::ZERO,
        Some(Ok(ms)) => Duration::from_millis(ms),
        Some(Err(_)) => return out.failed("parse", "--idle-ms needs milliseconds"),
    };
    let addr = match resolve(target) {
        Ok(a) => a,
        Err(e) => return out.error("resolve", &e),
    };
    let hello = match client_hello(sni) {
        Ok(h) => h,
        Err(e) => return out.failed("client-hello", &e),
    };
    let plan = Plan {
        slow_read,
        reset_after_sent: reset_after,
        shutdown_when_sent: !flags.no_shutdown,
        ..Plan::new(up, SEED_UP, SEED_DOWN)
    };
    let (local, got) = match once(addr, &hello, down, flags.eager, idle, &plan) {
        Ok(r) => r,
        Err((stage, e)) => return out.error(stage, &e),
    };
    out.field("result", "ok");
    out.field("local", &local.to_string());
    out.raw("hello_len", &hello.len().to_string());
    out.raw("up", &up.to_string());
    out.raw("down", &down.to_string());
    out.raw("sent", &got.sent.to_string());
    out.raw("received", &got.received.to_string());
    out.raw("received_ok", &got.received_ok.to_string());
    if let Some(bad) = got.first_bad {
        out.raw("first_bad", &bad.to_string());
    }
    if let Some(origin) = got.first_bad_origin {
        out.raw("first_bad_origin", &origin.to_string());
    }
    if !got.first_bad_bytes.is_empty() {
        let hex: String = got
            .first_bad_bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        out.field("first_bad_bytes", &hex);
    }
    out.field("end", &got.read_end.to_string());
    out.field("write_end", &got.write_end.to_string());
    out.raw(
        "sent_at_eof",
        &got.sent_at_eof.map_or("null".to_owned(), |n| n.to_string()),
    );
    out.raw("elapsed_ms", &got.elapsed.as_millis().to_string());
    out.raw("intact", &got.clean(up, down).to_string());
    out
}

/// `transfers`: see the module doc.
pub fn transfers(
    target: &str,
    sni: &str,
    count: &str,
    concurrency: &str,
    up: &str,
    down: &str,
) -> Json {
    let mut out = Json::new("transfers", target);
    let (Ok(count), Ok(concurrency), Ok(up), Ok(down)) = (
        count.parse::<usize>(),
        concurrency.parse::<usize>(),
        up.parse::<u64>(),
        down.parse::<u64>(),
    ) else {
        return out.failed("parse", "transfers needs SNI COUNT CONCURRENCY UP DOWN");
    };
    let addr = match resolve(target) {
        Ok(a) => a,
        Err(e) => return out.error("resolve", &e),
    };
    let hello = match client_hello(sni) {
        Ok(h) => h,
        Err(e) => return out.failed("client-hello", &e),
    };
    let plan = Plan {
        idle: Duration::from_secs(20),
        ..Plan::new(up, SEED_UP, SEED_DOWN)
    };
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let ok = AtomicUsize::new(0);
    let first_failure: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..concurrency.max(1) {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::SeqCst) < count {
                    let failure = match once(addr, &hello, down, false, Duration::ZERO, &plan) {
                        Ok((_, got)) if got.clean(up, down) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        Ok((local, got)) => describe(local, &got),
                        Err((stage, e)) => format!("{stage}: {e}"),
                    };
                    let mut first = first_failure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    first.get_or_insert(failure);
                }
            });
        }
    });
    let ok = ok.load(Ordering::SeqCst);
    out.field("result", "ok");
    out.raw("count", &count.to_string());
    out.raw("concurrency", &concurrency.to_string());
    out.raw("hello_len", &hello.len().to_string());
    out.raw("ok", &ok.to_string());
    out.raw("failed", &(count - ok).to_string());
    if let Some(first) = first_failure
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        out.field("first_failure", &first);
    }
    out.raw("elapsed_ms", &started.elapsed().as_millis().to_string());
    out
}

/// A transfer that was not intact, in one line.
fn describe(local: SocketAddr, got: &Outcome) -> String {
    format!(
        "{local}: sent {} received {} received_ok {} first_bad {:?} (belongs at {:?}) end {} \
         write_end {}",
        got.sent,
        got.received,
        got.received_ok,
        got.first_bad,
        got.first_bad_origin,
        got.read_end,
        got.write_end
    )
}

/// Connects, sends the ClientHello, waits for the greeting (not when `eager`), stays silent
/// for `idle`, sends the download size, then runs the pump; returns the client's address and
/// what it saw.
fn once(
    addr: SocketAddr,
    hello: &[u8],
    down: u64,
    eager: bool,
    idle: Duration,
    plan: &Plan,
) -> Result<(SocketAddr, Outcome), (&'static str, io::Error)> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| ("connect", e))?;
    let local = stream.local_addr().map_err(|e| ("getsockname", e))?;
    stream.set_nodelay(true).map_err(|e| ("nodelay", e))?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(|e| ("sndtimeo", e))?;
    let expected = greeting(hello.len() as u64);
    if eager {
        let mut first = Vec::with_capacity(hello.len() + 8);
        first.extend_from_slice(hello);
        first.extend_from_slice(&down.to_be_bytes());
        stream.write_all(&first).map_err(|e| ("write", e))?;
        let plan = Plan {
            preamble: Some(expected),
            ..plan.clone()
        };
        return Ok((local, pump(stream, &plan)));
    }
    stream.write_all(hello).map_err(|e| ("write", e))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| ("rcvtimeo", e))?;
    let mut got = [0u8; 8];
    stream.read_exact(&mut got).map_err(|e| ("greeting", e))?;
    if got != expected {
        let e = io::Error::other(format!("greeting {got:02x?}, expected {expected:02x?}"));
        return Err(("greeting", e));
    }
    std::thread::sleep(idle);
    stream
        .write_all(&down.to_be_bytes())
        .map_err(|e| ("write", e))?;
    Ok((local, pump(stream, plan)))
}
