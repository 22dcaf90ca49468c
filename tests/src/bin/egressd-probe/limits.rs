//! The actions of the limits tests (`tests/e2e/limits.rs`): a slow client, many held
//! connections, and a bounded load.
//!
//! ```text
//! slow ADDR:PORT HEX DRIP_MS WAIT_S    send the bytes HEX (all at once, or one every DRIP_MS),
//!                                      then wait up to WAIT_S for the server to close;
//!                                      `result` is `closed` (with `after_ms`) or `open`
//! hold ADDR:PORT N WAIT_MS             open N connections that send nothing, wait WAIT_MS,
//!                                      count how many the server closed (`closed`, `open`);
//!                                      a reset that beat connect() is `reset_at_connect`
//! load ADDR:PORT HOST N ROUNDS         ROUNDS times: N connections at once, each one
//!                                      `GET /` with `Host: HOST` and its whole response; all
//!                                      N stay open until the last response, then close.
//!                                      One line per round (`round`, `ok`, `errors`, `ms`,
//!                                      `first_error`), a pause of 1 s after each
//! sustain ADDR:PORT HOST N SECONDS     open N connections, each with one `GET /` as in
//!                                      `load`, and keep them: then round after round, one
//!                                      more request on every open connection, a pause of
//!                                      1 s after each, until SECONDS have passed. One line
//!                                      per round as in `load` (`ok` counts the connections
//!                                      still open and answering)
//! ```
//!
//! Everything is bounded: connects and reads time out (5 s for `hold`, 20 s for `load`), and
//! no action sends more than its arguments say.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    json::Json,
    net::{TIMEOUT, resolve},
};

/// `slow`: see the module doc.
pub fn slow(target: &str, hex: &str, drip_ms: &str, wait_s: &str) -> Json {
    let mut out = Json::new("slow", target);
    let (Some(bytes), Ok(drip_ms), Ok(wait_s)) =
        (unhex(hex), drip_ms.parse::<u64>(), wait_s.parse::<u64>())
    else {
        return out.failed("parse", "slow needs HEX DRIP_MS WAIT_S");
    };
    let addr = match resolve(target) {
        Ok(a) => a,
        Err(e) => return out.error("resolve", &e),
    };
    let mut stream = match TcpStream::connect_timeout(&addr, TIMEOUT) {
        Ok(s) => s,
        Err(e) => return out.error("connect", &e),
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(wait_s);
    let writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => return out.error("dup", &e),
    };
    let drip = Duration::from_millis(drip_ms);
    // Sends from its own thread, so that the close is seen while dripping.
    let sender = std::thread::spawn(move || {
        let mut writer = writer;
        let mut sent = 0usize;
        if drip.is_zero() {
            if writer.write_all(&bytes).is_ok() {
                sent = bytes.len();
            }
        } else {
            for b in &bytes {
                if Instant::now() >= deadline || writer.write_all(&[*b]).is_err() {
                    break;
                }
                sent += 1;
                std::thread::sleep(drip);
            }
        }
        sent
    });
    let mut buf = [0u8; 1024];
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            return out.error("setsockopt", &e);
        }
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break false;
            }
            Err(_) => break true,
        }
    };
    let after = started.elapsed();
    let _ = stream.shutdown(Shutdown::Both);
    let sent = sender.join().unwrap_or(0);
    out.raw("sent", &sent.to_string());
    if closed {
        out.field("result", "closed");
        out.raw("after_ms", &after.as_millis().to_string());
    } else {
        out.field("result", "open");
    }
    out
}

/// `hold`: see the module doc.
pub fn hold(target: &str, n: &str, wait_ms: &str) -> Json {
    let mut out = Json::new("hold", target);
    let (Ok(n), Ok(wait_ms)) = (n.parse::<usize>(), wait_ms.parse::<u64>()) else {
        return out.failed("parse", "hold needs N WAIT_MS");
    };
    let addr = match resolve(target) {
        Ok(a) => a,
        Err(e) => return out.error("resolve", &e),
    };
    let mut streams = Vec::with_capacity(n);
    let mut connect_errors = 0usize;
    let mut reset_at_connect = 0usize;
    let mut first_error = None;
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(s) => streams.push(s),
            // The handshake completed and the peer reset it before connect() saw the
            // established state: the peer answered and refused, as a reset after connect.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => reset_at_connect += 1,
            Err(e) => {
                connect_errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(wait_ms));
    let mut closed = 0usize;
    for s in &streams {
        let _ = s.set_nonblocking(true);
        let mut byte = [0u8; 1];
        match s.peek(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            _ => closed += 1,
        }
    }
    out.field("result", "ok");
    out.raw("connected", &streams.len().to_string());
    out.raw("connect_errors", &connect_errors.to_string());
    out.raw("reset_at_connect", &reset_at_connect.to_string());
    if let Some(e) = first_error {
        out.field("first_connect_error", &e.to_string());
    }
    out.raw("closed", &closed.to_string());
    out.raw("open", &(streams.len() - closed).to_string());
    out
}

/// `sustain`: see the module doc. Prints one line per round itself and returns the summary.
pub fn sustain(target: &str, host: &str, n: &str, secs: &str) -> Json {
    let mut out = Json::new("sustain", target);
    let (Ok(n), Ok(secs)) = (n.parse::<usize>(), secs.parse::<u64>()) else {
        return out.failed("parse", "sustain needs HOST N SECONDS");
    };
    let (addr, rt, request) = match http_client(target, host) {
        Ok(parts) => parts,
        Err((stage, e)) => return out.error(stage, &e),
    };
    let began = Instant::now();
    let mut total_errors = 0usize;
    let mut open: Vec<tokio::net::TcpStream> = Vec::with_capacity(n);
    let mut round = 0usize;
    loop {
        round += 1;
        let started = Instant::now();
        // Round 1 opens the N connections; every later round sends one more request on
        // each of those still open.
        let results = if round == 1 {
            rt.block_on(round_of(addr, n, Arc::clone(&request)))
        } else {
            rt.block_on(again(std::mem::take(&mut open), Arc::clone(&request)))
        };
        let mut first_error = None;
        for r in results {
            match r {
                Ok(stream) => open.push(stream),
                Err(e) => {
                    total_errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        let mut line = Json::new("sustain-round", target);
        line.raw("round", &round.to_string());
        line.raw("ok", &open.len().to_string());
        line.raw("errors", &(n - open.len()).to_string());
        line.raw("ms", &started.elapsed().as_millis().to_string());
        if let Some(e) = first_error {
            line.field("first_error", &e);
        }
        println!("{line}");
        if began.elapsed() >= Duration::from_secs(secs) || open.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(open);
    out.field("result", if total_errors == 0 { "ok" } else { "error" });
    out.raw("rounds", &round.to_string());
    out.raw("errors", &total_errors.to_string());
    out
}

/// One more request on each of `streams`, all at once; gives back each stream that answered.
async fn again(
    streams: Vec<tokio::net::TcpStream>,
    request: Arc<[u8]>,
) -> Vec<Result<tokio::net::TcpStream, String>> {
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    let mut tasks = tokio::task::JoinSet::new();
    for mut stream in streams {
        let (gate, request) = (Arc::clone(&gate), Arc::clone(&request));
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            tokio::time::timeout(LOAD_TIMEOUT, request_on(&mut stream, &request))
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()))?;
            Ok(stream)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.unwrap_or_else(|e| Err(format!("task: {e}"))));
    }
    results
}

/// What `load` and `sustain` need: the target's address, a runtime, and the request they
/// send (`GET /` with `Host: host`).
type HttpClient = (SocketAddr, tokio::runtime::Runtime, Arc<[u8]>);

/// The [`HttpClient`] for `target` and `host`; the error names the failed stage.
fn http_client(target: &str, host: &str) -> Result<HttpClient, (&'static str, io::Error)> {
    let addr = resolve(target).map_err(|e| ("resolve", e))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ("runtime", e))?;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: egressd-probe\r\n\r\n")
        .into_bytes()
        .into();
    Ok((addr, rt, request))
}

/// `load`: see the module doc. Prints one line per round itself and returns the summary.
pub fn load(target: &str, host: &str, n: &str, rounds: &str) -> Json {
    let mut out = Json::new("load", target);
    let (Ok(n), Ok(rounds)) = (n.parse::<usize>(), rounds.parse::<usize>()) else {
        return out.failed("parse", "load needs HOST N ROUNDS");
    };
    let (addr, rt, request) = match http_client(target, host) {
        Ok(parts) => parts,
        Err((stage, e)) => return out.error(stage, &e),
    };
    let mut total_errors = 0usize;
    for round in 1..=rounds {
        let started = Instant::now();
        let results = rt.block_on(round_of(addr, n, Arc::clone(&request)));
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let errors = results.len() - ok;
        total_errors += errors;
        let mut line = Json::new("load-round", target);
        line.raw("round", &round.to_string());
        line.raw("ok", &ok.to_string());
        line.raw("errors", &errors.to_string());
        line.raw("ms", &started.elapsed().as_millis().to_string());
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            line.field("first_error", e);
        }
        // All N were open together; they close here, before the line is printed.
        drop(results);
        println!("{line}");
        std::thread::sleep(Duration::from_secs(1));
    }
    out.field("result", if total_errors == 0 { "ok" } else { "error" });
    out.raw("errors", &total_errors.to_string());
    out
}

/// Deadline of one connection of `load`.
const LOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// Most connects in flight at once (the rest wait; every connection still ends up open at
/// the same time).
const CONNECTING: usize = 256;

/// One round: `n` connections, each with its response read; returns them all still open
/// (or the error of each that failed).
async fn round_of(
    addr: SocketAddr,
    n: usize,
    request: Arc<[u8]>,
) -> Vec<Result<tokio::net::TcpStream, String>> {
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (gate, request) = (Arc::clone(&gate), Arc::clone(&request));
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            tokio::time::timeout(LOAD_TIMEOUT, exchange(addr, &request))
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()))
        });
    }
    let mut results = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        results.push(r.unwrap_or_else(|e| Err(format!("task: {e}"))));
    }
    results
}

/// Connects, sends `request`, reads one whole `200` response; returns the open stream.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Result<tokio::net::TcpStream, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    request_on(&mut s, request).await?;
    Ok(s)
}

/// Sends `request` on `s` and reads its whole `200` response (by `Content-Length`).
async fn request_on(s: &mut tokio::net::TcpStream, request: &[u8]) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(512);
    loop {
        let mut chunk = [0u8; 1024];
        let got = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if got == 0 {
            return Err(format!("closed after {:?}", String::from_utf8_lossy(&buf)));
        }
        buf.extend_from_slice(&chunk[..got]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return Err(format!("response {:?}", head.lines().next().unwrap_or("")));
            }
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("no content-length")?;
            if buf.len() >= end + 4 + length {
                return Ok(());
            }
        }
        if buf.len() > 64 * 1024 {
            return Err("response too large".to_owned());
        }
    }
}

/// `"16030102"` -> bytes; `None` if not hex.
fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}
