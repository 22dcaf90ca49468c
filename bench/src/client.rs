//! `egressd-bench client`: the workload client. It reads [`Op`]s on stdin and answers a
//! [`Reply`] per op on stdout, so one process serves every workload of a target and can hold
//! connections open while the orchestrator samples the proxy.
//!
//! Every target is reached the same way: a TCP connection to `--connect`, for the explicit
//! proxies (Squid, mitmproxy) a `CONNECT` to [`UPSTREAM_NAME`]`:443` first, then TLS with SNI
//! [`UPSTREAM_NAME`] (session resumption off: every connection is a full handshake) and
//! HTTP/1.1 requests with that `Host`. The roots are the `--ca` files plus `$SSL_CERT_FILE`
//! when set (egressd's intercept sandbox gets its CA bundle that way).
//!
//! Every loop is bounded: by the op's duration or count, and each connection by
//! [`OP_TIMEOUT`].

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rustls::{
    ClientConfig, RootCertStore,
    client::Resumption,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::Semaphore,
    task::JoinSet,
    time::{Instant, timeout},
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::{
    http1,
    proto::{Op, Reply, TOKEN_SEEN_HEADER, UPSTREAM_NAME, percentiles},
};

/// Longest one connection or request may take before it counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer of a connection that only sees small answers.
const SMALL_BUF: usize = 4096;
/// Read buffer of the bulk connection.
const BULK_BUF: usize = 256 * 1024;

/// How the client reaches the target.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where to open TCP connections.
    pub connect: SocketAddr,
    /// Send `CONNECT bench.test:443` first (explicit HTTP proxies).
    pub via_connect: bool,
    /// CA certificates (PEM) to trust, besides `$SSL_CERT_FILE`.
    pub ca: Vec<PathBuf>,
}

/// Runs the op loop until `Quit` or the end of stdin.
///
/// # Errors
///
/// The CA files could not be read, or stdin/stdout failed.
pub fn main(target: Target) -> Result<()> {
    let _ = crate::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client = Arc::new(Client::new(target)?);
        let mut held: Vec<Conn> = Vec::new();
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let mut out = tokio::io::stdout();
        while let Some(line) = lines.next_line().await? {
            let op: Op = match serde_json::from_str(&line) {
                Ok(op) => op,
                Err(e) => {
                    reply(&mut out, &Reply::failed(format!("bad op {line:?}: {e}"))).await?;
                    continue;
                }
            };
            let answer = match op {
                Op::Ready { timeout_ms } => client.ready(Duration::from_millis(timeout_ms)).await,
                Op::ConnRate {
                    concurrency,
                    duration_ms,
                } => {
                    Arc::clone(&client)
                        .conn_rate(concurrency, Duration::from_millis(duration_ms))
                        .await
                }
                Op::KeepAlive {
                    concurrency,
                    duration_ms,
                } => {
                    Arc::clone(&client)
                        .keep_alive(concurrency, Duration::from_millis(duration_ms))
                        .await
                }
                Op::Bulk { bytes, timeout_ms } => {
                    client.bulk(bytes, Duration::from_millis(timeout_ms)).await
                }
                Op::Hold {
                    total,
                    parallel,
                    timeout_ms,
                } => {
                    Arc::clone(&client)
                        .hold(
                            &mut held,
                            total,
                            parallel,
                            Duration::from_millis(timeout_ms),
                        )
                        .await
                }
                Op::Probe { count } => client.probe(count).await,
                Op::Release => {
                    held.clear();
                    Reply {
                        ok: true,
                        ..Reply::default()
                    }
                }
                Op::Quit => {
                    reply(
                        &mut out,
                        &Reply {
                            ok: true,
                            ..Reply::default()
                        },
                    )
                    .await?;
                    break;
                }
            };
            reply(&mut out, &answer).await?;
        }
        Ok(())
    })
}

async fn reply(out: &mut tokio::io::Stdout, reply: &Reply) -> Result<()> {
    let mut line = serde_json::to_string(reply)?;
    line.push('\n');
    out.write_all(line.as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

struct Client {
    target: Target,
    tls: TlsConnector,
    name: ServerName<'static>,
}

/// One open TLS connection with its read buffer.
struct Conn {
    io: BufReader<TlsStream<TcpStream>>,
}

/// What one response said.
struct Answer {
    token_seen: bool,
}

impl Client {
    fn new(target: Target) -> Result<Self> {
        let mut roots = RootCertStore::empty();
        let mut files = target.ca.clone();
        if let Some(bundle) = std::env::var_os("SSL_CERT_FILE") {
            files.push(bundle.into());
        }
        for file in &files {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
                .with_context(|| format!("reading {}", file.display()))?
                .filter_map(Result::ok)
                .collect();
            roots.add_parsable_certificates(certs);
        }
        ensure!(!roots.is_empty(), "no CA certificate to trust (--ca)");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        Ok(Self {
            target,
            tls: TlsConnector::from(Arc::new(config)),
            name: ServerName::try_from(UPSTREAM_NAME)?,
        })
    }

    /// TCP connect, `CONNECT` if asked, TLS handshake.
    async fn open(&self, buf: usize) -> Result<Conn> {
        let mut tcp = TcpStream::connect(self.target.connect)
            .await
            .with_context(|| format!("connecting to {}", self.target.connect))?;
        tcp.set_nodelay(true)?;
        if self.target.via_connect {
            let req = format!(
                "CONNECT {UPSTREAM_NAME}:443 HTTP/1.1\r\nHost: {UPSTREAM_NAME}:443\r\nUser-Agent: egressd-bench\r\n\r\n"
            );
            tcp.write_all(req.as_bytes()).await?;
            // Read the answer's head byte by byte: nothing may be taken from the TLS bytes
            // that follow (the proxy sends none before our ClientHello, but be exact).
            let mut head = Vec::with_capacity(128);
            while !head.ends_with(b"\r\n\r\n") {
                ensure!(head.len() < http1::MAX_HEAD, "CONNECT answer too large");
                let byte = tcp.read_u8().await.context("reading the CONNECT answer")?;
                head.push(byte);
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            resp.parse(&head)?;
            ensure!(
                resp.code == Some(200),
                "CONNECT answered {}",
                resp.code.unwrap_or(0)
            );
        }
        let tls = self
            .tls
            .connect(self.name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        Ok(Conn {
            io: BufReader::with_capacity(buf, tls),
        })
    }

    /// A new connection, one request with `connection: close`, then the close.
    async fn one_shot(&self) -> Result<Duration> {
        let start = Instant::now();
        let mut conn = self.open(SMALL_BUF).await?;
        conn.get("/small", true).await?;
        let took = start.elapsed();
        // The upstream closes first; read its close_notify and FIN so that closing here
        // sends no reset.
        let mut rest = [0u8; 64];
        let _ = timeout(Duration::from_secs(1), conn.io.read(&mut rest)).await;
        Ok(took)
    }

    async fn ready(&self, limit: Duration) -> Reply {
        let deadline = Instant::now() + limit;
        let mut last = String::from("never tried");
        while Instant::now() < deadline {
            let attempt = async {
                let mut conn = self.open(SMALL_BUF).await?;
                conn.get("/small", false).await
            };
            match timeout(OP_TIMEOUT, attempt).await {
                Ok(Ok(answer)) => {
                    return Reply {
                        ok: true,
                        ops: 1,
                        token_seen: answer.token_seen,
                        ..Reply::default()
                    };
                }
                Ok(Err(e)) => last = format!("{e:#}"),
                Err(_) => last = "timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Reply::failed(format!("target not ready: {last}"))
    }

    async fn conn_rate(self: Arc<Self>, concurrency: usize, duration: Duration) -> Reply {
        let deadline = Instant::now() + duration;
        let start = Instant::now();
        let mut workers = JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let client = Arc::clone(&self);
            workers.spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    match timeout(OP_TIMEOUT, client.one_shot()).await {
                        Ok(Ok(took)) => tally.ok(took),
                        Ok(Err(e)) => tally.error(format!("{e:#}")).await,
                        Err(_) => tally.error("timed out".into()).await,
                    }
                }
                tally
            });
        }
        Tally::join(workers, start).await
    }

    async fn keep_alive(self: Arc<Self>, concurrency: usize, duration: Duration) -> Reply {
        let mut conns = Vec::new();
        for _ in 0..concurrency.max(1) {
            match timeout(OP_TIMEOUT, self.open(SMALL_BUF)).await {
                Ok(Ok(conn)) => conns.push(conn),
                Ok(Err(e)) => return Reply::failed(format!("{e:#}")),
                Err(_) => return Reply::failed("opening a connection timed out"),
            }
        }
        let start = Instant::now();
        let deadline = start + duration;
        let mut workers = JoinSet::new();
        for mut conn in conns {
            workers.spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match timeout(OP_TIMEOUT, conn.get("/small", false)).await {
                        Ok(Ok(_)) => tally.ok(t.elapsed()),
                        // A broken keep-alive connection ends this worker.
                        Ok(Err(e)) => {
                            tally.error(format!("{e:#}")).await;
                            break;
                        }
                        Err(_) => {
                            tally.error("timed out".into()).await;
                            break;
                        }
                    }
                }
                tally
            });
        }
        Tally::join(workers, start).await
    }

    async fn bulk(&self, bytes: u64, limit: Duration) -> Reply {
        let run = async {
            let mut conn = self.open(BULK_BUF).await?;
            let start = Instant::now();
            let got = conn.get_sized(&format!("/bulk/{bytes}"), false).await?;
            ensure!(got == bytes, "received {got} of {bytes} bytes");
            Ok::<_, anyhow::Error>(start.elapsed())
        };
        match timeout(limit, run).await {
            Ok(Ok(took)) => Reply {
                ok: true,
                ops: 1,
                bytes,
                secs: took.as_secs_f64(),
                ..Reply::default()
            },
            Ok(Err(e)) => Reply::failed(format!("{e:#}")),
            Err(_) => Reply::failed(format!("bulk transfer not done within {limit:?}")),
        }
    }

    async fn hold(
        self: Arc<Self>,
        held: &mut Vec<Conn>,
        total: usize,
        parallel: usize,
        limit: Duration,
    ) -> Reply {
        let start = Instant::now();
        let deadline = start + limit;
        let want = total.saturating_sub(held.len());
        let gate = Arc::new(Semaphore::new(parallel.max(1)));
        let errors = Arc::new(AtomicU64::new(0));
        let mut opening = JoinSet::new();
        let mut first_error = None;
        for _ in 0..want {
            let client = Arc::clone(&self);
            let gate = Arc::clone(&gate);
            let errors = Arc::clone(&errors);
            opening.spawn(async move {
                let _permit = gate.acquire_owned().await.ok()?;
                if Instant::now() >= deadline {
                    return None;
                }
                let attempt = async {
                    let mut conn = client.open(SMALL_BUF).await?;
                    conn.get("/small", false).await?;
                    Ok::<_, anyhow::Error>(conn)
                };
                match timeout(OP_TIMEOUT, attempt).await {
                    Ok(Ok(conn)) => Some(Ok(conn)),
                    Ok(Err(e)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        Some(Err(format!("{e:#}")))
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        Some(Err("timed out".to_owned()))
                    }
                }
            });
        }
        let stop = tokio::time::sleep_until(deadline + OP_TIMEOUT);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                next = opening.join_next() => match next {
                    Some(Ok(Some(Ok(conn)))) => held.push(conn),
                    Some(Ok(Some(Err(e)))) => { first_error.get_or_insert(e); }
                    Some(_) => {}
                    None => break,
                },
                () = &mut stop => {
                    opening.abort_all();
                    break;
                }
            }
        }
        Reply {
            ok: true,
            ops: held.len() as u64,
            held: held.len(),
            errors: errors.load(Ordering::Relaxed),
            secs: start.elapsed().as_secs_f64(),
            error: first_error,
            ..Reply::default()
        }
    }

    async fn probe(&self, count: usize) -> Reply {
        let start = Instant::now();
        let mut tally = Tally::default();
        for _ in 0..count {
            match timeout(OP_TIMEOUT, self.one_shot()).await {
                Ok(Ok(took)) => tally.ok(took),
                Ok(Err(e)) => tally.error(format!("{e:#}")).await,
                Err(_) => tally.error("timed out".into()).await,
            }
        }
        tally.reply(start.elapsed())
    }
}

impl Conn {
    /// One request; the body is read and dropped.
    async fn get(&mut self, path: &str, close: bool) -> Result<Answer> {
        self.request(path, close).await.map(|(answer, _)| answer)
    }

    /// One request; returns the body size read.
    async fn get_sized(&mut self, path: &str, close: bool) -> Result<u64> {
        self.request(path, close).await.map(|(_, n)| n)
    }

    async fn request(&mut self, path: &str, close: bool) -> Result<(Answer, u64)> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {UPSTREAM_NAME}\r\nUser-Agent: egressd-bench\r\nAccept: */*\r\n{}\r\n",
            if close { "Connection: close\r\n" } else { "" }
        );
        let stream = self.io.get_mut();
        stream.write_all(req.as_bytes()).await?;
        stream.flush().await?;
        let head = http1::read_head(&mut self.io)
            .await?
            .ok_or_else(|| anyhow!("connection closed before the answer"))?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&head)?;
        let status = resp.code.unwrap_or(0);
        let token_seen = http1::header(resp.headers, TOKEN_SEEN_HEADER) == Some(b"1");
        let length = if http1::is_chunked(resp.headers) {
            http1::discard_chunked(&mut self.io).await?
        } else {
            let length = http1::content_length(resp.headers)
                .ok_or_else(|| anyhow!("answer {status} without a length"))?;
            http1::discard(&mut self.io, length).await?;
            length
        };
        if status != 200 {
            bail!("answer {status}");
        }
        Ok((Answer { token_seen }, length))
    }
}

/// Latencies and errors of one worker.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn ok(&mut self, took: Duration) {
        self.latencies_us
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
    }

    async fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
        // A target that refuses everything must not turn the loop into a busy spin.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    async fn join(mut workers: JoinSet<Tally>, start: Instant) -> Reply {
        let mut all = Tally::default();
        while let Some(done) = workers.join_next().await {
            if let Ok(t) = done {
                all.latencies_us.extend(t.latencies_us);
                all.errors += t.errors;
                if all.first_error.is_none() {
                    all.first_error = t.first_error;
                }
            }
        }
        all.reply(start.elapsed())
    }

    fn reply(mut self, took: Duration) -> Reply {
        let (p50_us, p99_us) = percentiles(&mut self.latencies_us);
        Reply {
            ok: !self.latencies_us.is_empty(),
            ops: self.latencies_us.len() as u64,
            errors: self.errors,
            secs: took.as_secs_f64(),
            p50_us,
            p99_us,
            error: self.first_error,
            ..Reply::default()
        }
    }
}
