//! One connection, start to end: the pipeline of the crate doc.
//!
//! [`Proxy::handle`] reads as the pipeline: original destination, route (DNS, the
//! api-proxy, loopback, or classify), classify, decide (which picks interception too),
//! connect and relay, or intercept, or serve plain HTTP; then exactly one audit record. Stage functions live in the
//! submodules and never write audit records or client-visible refusals themselves; this file
//! assembles the [`Record`] from their results and `respond.rs` refuses.

pub(crate) mod classify;
pub(crate) mod decide;
pub(crate) mod http;
pub(crate) mod rewind;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::Proxy;
use crate::addr::{ClientAddr, OrigDst};
use crate::audit::{Proto, Record};
use crate::conn::classify::{Classified, classify};
use crate::conn::decide::{Verdict, decide_loopback, decide_tls};
use crate::conn::rewind::Rewind;
use crate::error::{ErrorKind, chain};
use crate::host::HostName;
use crate::intercept;
use crate::respond;
use crate::transport::{connect, limits, relay, sockmap, splice};

/// Audit reason for a connection whose original destination is unknown.
const NO_ORIG_DST: &str = "no original destination recorded";
/// Audit reason for a connection aimed at the proxy listener itself.
const SELF_LOOP: &str = "destination is the egressd listener itself";
/// How long a refused client's remaining bytes are read and dropped before closing.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// Most bytes read and dropped that way.
const LINGER_MAX_BYTES: usize = 1 << 20;
/// Audit reason (start) for a connection past `limits.max_connections`.
const OVER_LIMIT: &str = "connection limit reached";

/// Where an accepted connection goes before anything is read from it (see [`route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// TCP to port 53: DNS over TCP, answered like UDP (`dns.rs`).
    Dns,
    /// AWF's api-proxy address (`awf` mode): served by `awf/apiproxy.rs`, not the allowlist.
    ApiProxy,
    /// The listener itself: a loop, refused.
    SelfLoop,
    /// A loopback destination: decided on its port alone and relayed unclassified.
    Loopback,
    /// Everything else: classify, decide, then connect and relay, or intercept.
    Classify,
}

/// Routes a connection whose original destination is `orig` (accepted on `local`); pure.
fn route(orig: OrigDst, local: SocketAddr, api_proxy: bool) -> Route {
    let local_dst = connect::is_local(orig.0.ip());
    if orig.0.port() == 53 {
        Route::Dns
    } else if api_proxy && orig.0.ip() == std::net::IpAddr::V4(egressd_config::awf::apiproxy::IP) {
        Route::ApiProxy
    } else if orig.0 == local || (local_dst && orig.0.port() == local.port()) {
        Route::SelfLoop
    } else if local_dst {
        Route::Loopback
    } else {
        Route::Classify
    }
}

impl Proxy {
    /// Runs the pipeline on one accepted connection and writes its audit record(s):
    /// route, then classify -> decide -> connect -> relay, or intercept.
    pub(crate) async fn handle(
        self: Arc<Self>,
        mut stream: TcpStream,
        client: ClientAddr,
        local: SocketAddr,
        orig: Option<OrigDst>,
    ) {
        let started = Instant::now();
        let _ = stream.set_nodelay(true); // latency only; failure is harmless
        let mut rec = Record::new(&self.sandbox, client.0, orig.map(|o| o.0), Proto::Unknown);
        let Some(orig) = orig else {
            rec.reason = NO_ORIG_DST.to_owned();
            return self.refuse(stream, rec, started);
        };
        match route(orig, local, self.api_proxy.is_some()) {
            Route::Dns => {
                return Box::pin(crate::dns::serve_tcp(&self, stream, client.0, orig.0)).await;
            }
            Route::ApiProxy => {
                return Box::pin(crate::awf::apiproxy::serve(self, stream, client.0, orig.0)).await;
            }
            Route::SelfLoop => {
                rec.reason = SELF_LOOP.to_owned();
                return self.refuse(stream, rec, started);
            }
            Route::Loopback => {
                rec.proto = Proto::Loopback;
                let verdict = decide_loopback(&self.config.policy, orig.0);
                return self
                    .pass_through(stream, Vec::new(), verdict, rec, started)
                    .await;
            }
            Route::Classify => {}
        }
        let max_head = self.config.limits.max_header_bytes as usize;
        let classified = Box::pin(classify(
            &mut stream,
            self.config.timeouts.classify,
            max_head,
        ))
        .await;
        let (classified, buffered) = match classified {
            Ok(c) => c,
            Err(e) => {
                if e.is_tls() {
                    rec.proto = Proto::Tls;
                }
                if let crate::error::ClassifyError::EncryptedClientHello { public_name } = &e {
                    rec.name.clone_from(public_name);
                }
                rec.reason = chain(&e);
                if e.is_head_too_large() {
                    rec.proto = Proto::Http;
                    if let crate::error::ClassifyError::HttpHeadTooLarge { .. } = e {
                        rec.reason = limits::too_large_reason(self.config.limits.max_header_bytes);
                    }
                    return Box::pin(self.head_too_large(stream, rec, started)).await;
                }
                return self.refuse(stream, rec, started);
            }
        };
        let Classified::Tls(hello) = &classified else {
            // Plain HTTP: each request is decided on its own `Host` (`http.rs`).
            let io = Rewind::new(buffered, stream);
            return Box::pin(http::serve(&self, io, client, orig)).await;
        };
        rec.proto = Proto::Tls;
        rec.ech = hello.ech;
        let intercepts = self.interception.as_ref().map(|_| &self.config.intercepts);
        let verdict = decide_tls(&self.config.policy, intercepts, &classified, orig.0);
        match verdict {
            Verdict::Intercept {
                decision, rules, ..
            } => {
                // A rule names this host: terminate TLS and judge each request.
                let sni = hello.sni.clone().unwrap_or_default();
                let io = Rewind::new(buffered, stream);
                let served = Box::pin(intercept::serve(
                    Arc::clone(&self),
                    io,
                    sni.clone(),
                    client.0,
                    orig.0,
                    rules,
                ))
                .await;
                if let Err(reason) = served {
                    // The requests (if any) have their own records; this one says why the
                    // connection ended badly.
                    rec.name = Some(sni);
                    rec.rule = decision.rule.as_ref().map(ToString::to_string);
                    rec.reason = reason;
                    self.finish(rec, started);
                }
            }
            verdict => {
                self.pass_through(stream, buffered, verdict, rec, started)
                    .await;
            }
        }
    }

    /// Acts on a TLS or loopback verdict: refuse, or connect and relay `prefix` + the rest.
    async fn pass_through(
        &self,
        stream: TcpStream,
        prefix: Vec<u8>,
        verdict: Verdict,
        mut rec: Record,
        started: Instant,
    ) {
        let dest = verdict.dest().clone();
        let decision = verdict.decision().clone();
        if let HostName::Name(n) = &dest.host {
            rec.name = Some(n.clone());
        }
        rec.port = Some(dest.port);
        rec.rule = decision.rule.as_ref().map(ToString::to_string);
        rec.reason = decision.reason.to_string();
        rec.code = Some(decision.reason.code());
        let Verdict::PassThrough { .. } = verdict else {
            return self.refuse(stream, rec, started);
        };
        // Each stage's future is boxed and gone once it completes: an idle relayed
        // connection holds only the relay's state, not the resolver's or the classifier's.
        let upstream = match Box::pin(self.connector.connect(
            &dest.host,
            dest.port,
            decision.reach(),
        ))
        .await
        {
            Ok(u) => u,
            Err(e) => {
                if !ErrorKind::of(&e).is_denial() {
                    rec.went_ahead_and_failed(&decision);
                }
                rec.reason = chain(&e);
                return self.refuse(stream, rec, started);
            }
        };
        rec.went_ahead(&decision);
        rec.upstream = Some(upstream.addr);
        let in_kernel = rec.proto == Proto::Tls;
        let (out, how) = self.relay(stream, upstream.stream, prefix, in_kernel).await;
        rec.relay = how;
        rec.bytes_up = out.bytes_up;
        rec.bytes_down = out.bytes_down;
        if let Some(end) = out.end.describe() {
            rec.reason = format!("{}; {end}", rec.reason);
        }
        self.finish(rec, started);
    }

    /// Moves an allowed connection's bytes, `prefix` (what classification read) first:
    /// through the in-kernel relay when `in_kernel` and the daemon gave one, else (or when
    /// it refuses the sockets) with splice. Either way no byte passes through a userspace
    /// buffer after the prefix, which is freed once written. Returns how it went and which
    /// path carried it (`kernel`, `splice`; none when the prefix could not be written).
    ///
    /// Loopback destinations take splice: a local client may speak first and keep
    /// speaking, and the hand-over cannot keep bytes in order that arrive during it.
    async fn relay(
        &self,
        mut client: TcpStream,
        mut upstream: TcpStream,
        prefix: Vec<u8>,
        in_kernel: bool,
    ) -> (relay::Outcome, Option<&'static str>) {
        let idle = self.config.timeouts.idle;
        let read = match relay::write_prefix(&mut upstream, &prefix, idle).await {
            Ok(n) => n,
            Err(end) => return (relay::Outcome::ended(end), None),
        };
        drop(prefix);
        let mut out = 'relayed: {
            if let Some((kernel, ends)) = self.kernel_relay().filter(|_| in_kernel) {
                let handed = sockmap::relay(kernel, ends, client, upstream, read, idle);
                match Box::pin(handed).await {
                    Ok(out) => break 'relayed (out, "kernel"),
                    Err(not) => {
                        tracing::debug!("in-kernel relay refused the connection: {}", not.why);
                        (client, upstream) = (not.client, not.upstream);
                    }
                }
            }
            let spliced = splice::relay(&mut client, &mut upstream, &[], idle);
            (Box::pin(spliced).await, "splice")
        };
        out.0.bytes_up += read;
        (out.0, Some(out.1))
    }

    /// Refuses a connection accepted past `limits.max_connections`: reset and audited.
    pub(crate) fn refuse_over_limit(
        &self,
        stream: TcpStream,
        client: ClientAddr,
        orig: Option<OrigDst>,
    ) {
        let mut rec = Record::new(&self.sandbox, client.0, orig.map(|o| o.0), Proto::Unknown);
        rec.reason = format!(
            "{OVER_LIMIT}: {} connections open (limits.max_connections)",
            self.config.limits.max_connections
        );
        self.refuse(stream, rec, Instant::now());
    }

    /// Answers `431` to a first request whose head is over the limit, closes, audits.
    async fn head_too_large(&self, mut stream: TcpStream, rec: Record, started: Instant) {
        let denial = respond::Denial {
            host: None,
            port: rec.orig_dst.map_or(80, |o| o.port()),
            reason: rec.reason.clone(),
            rule: None,
        };
        let written = tokio::time::timeout(
            self.config.timeouts.classify,
            respond::write_raw(&mut stream, respond::header_too_large(&denial)),
        )
        .await;
        if matches!(written, Ok(Ok(()))) {
            // The client is likely still sending its head: read and drop the rest for a
            // moment, as closing with unread bytes would reset the connection and could
            // discard the 431 before the client reads it (nginx's lingering close).
            let drain = async {
                let mut sink = [0u8; 8192];
                let mut total = 0usize;
                while total < LINGER_MAX_BYTES {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        } else {
            tracing::debug!("could not send the 431 response");
        }
        self.finish(rec, started);
    }

    /// Resets the connection and writes `rec` as it stands.
    fn refuse(&self, stream: TcpStream, rec: Record, started: Instant) {
        respond::reset(stream);
        self.finish(rec, started);
    }

    /// Stamps the duration on `rec` and writes it: the single audit exit of a connection.
    fn finish(&self, mut rec: Record, started: Instant) {
        rec.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.audit.record(&rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orig(addr: &str) -> OrigDst {
        OrigDst(addr.parse().unwrap())
    }

    #[test]
    fn routes_before_reading_anything() {
        let local: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        let r = |o: &str, api| route(orig(o), local, api);
        assert_eq!(r("192.0.2.1:53", false), Route::Dns);
        assert_eq!(r("172.30.0.30:10000", true), Route::ApiProxy);
        assert_eq!(r("172.30.0.30:10000", false), Route::Classify);
        assert_eq!(r("127.0.0.1:15001", false), Route::SelfLoop);
        assert_eq!(r("127.0.0.5:15001", false), Route::SelfLoop);
        assert_eq!(r("127.0.0.1:8080", false), Route::Loopback);
        assert_eq!(r("192.0.2.1:443", false), Route::Classify);
    }
}
