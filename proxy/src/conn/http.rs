//! Plain HTTP/1: serve the client with hyper and decide every request on its own `Host`.
//!
//! A connection that classified as HTTP is handed to a hyper HTTP/1 server (the classified
//! bytes replayed through `Rewind`). Each request, including every keep-alive request after
//! the first, goes through the same checks, in order:
//!
//! 1. `CONNECT` is refused: egressd is a transparent firewall, not a forward proxy;
//! 2. exactly one parseable `Host` header is required (else `400`);
//! 3. an absolute-form target (`GET http://a/ HTTP/1.1`) must name the same host as `Host`;
//! 4. policy decides on the `Host` name (`decide`), on the port the client dialled;
//! 5. upgrades (WebSocket, h2c) are refused for now;
//! 6. allowed requests are forwarded over one cached upstream connection per (host, port),
//!    resolved and guarded by `connect`, and the response is streamed back.
//!
//! Before these, a request whose head is over `limits.max_header_bytes` gets `431` (see
//! `conn/limits.rs`); the head of each later request must arrive within
//! `timeouts.request_head` of the previous response, else the connection is closed.
//!
//! Every request yields exactly one audit record, written when its response body is done
//! (or dropped), with the request and response body byte counts. A head so large that
//! hyper refuses it itself is audited when the connection ends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderMap, UPGRADE};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;

use crate::Proxy;
use crate::addr::{ClientAddr, OrigDst};
use crate::audit::{AuditDecision, Proto, Record};
use crate::body::{
    AuditedBody, BodyTooLarge, Counted, PendingRecord, ResBody, Sent, strip_hop_by_hop,
};
use crate::conn::classify::{Classified, HttpHead};
use crate::conn::decide::{Dest, Verdict, decide};
use crate::error::{ErrorKind, chain};
use crate::host::{HostName, normalize_host};
use crate::respond::{self, Denial};
use crate::transport::limits;

const NOT_A_FORWARD_PROXY: &str = "egressd is not a forward proxy (CONNECT refused)";
const AUTHORITY_MISMATCH: &str = "request target names a different host than the Host header";
const UPGRADE_REFUSED: &str = "protocol upgrades (websocket, h2c) are not supported yet";
/// Longest path written to the audit log.
const MAX_AUDIT_PATH: usize = 1024;

/// Serves one client connection until it closes, auditing each request.
///
/// `io` is the client connection with the classified bytes replayed first (a
/// `Rewind<TcpStream>`; anything else in tests and fuzzing).
pub(crate) async fn serve<IO>(proxy: &Proxy, io: IO, client: ClientAddr, orig: OrigDst)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = HttpConn {
        proxy,
        client,
        orig,
        upstreams: Mutex::new(HashMap::new()),
    };
    let service = hyper::service::service_fn(|req| conn.handle(req));
    let limit = proxy.config.limits.max_header_bytes;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(proxy.config.timeouts.request_head)
        .max_buf_size(limits::hyper_buf_size(limit))
        .max_headers(limits::HYPER_MAX_HEADERS)
        .keep_alive(true);
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        if e.is_parse_too_large() {
            // hyper answered 431 itself (a head over twice the limit, or too many headers).
            let mut rec = Record::new(&proxy.sandbox, client.0, Some(orig.0), Proto::Http);
            rec.reason = limits::too_large_reason(limit);
            proxy.audit.record(&rec);
        }
        tracing::debug!(error = %e, "plain-HTTP client connection ended with an error");
    }
}

/// The most upstream connections one client connection keeps for reuse: a client naming a
/// new allowed `Host` on every request must not make egressd hold an upstream connection
/// (and its descriptor and buffers) for each.
const MAX_UPSTREAMS_PER_CONNECTION: usize = 8;

/// Closes cached upstream connections (closed ones first, then any) until one more fits,
/// unless `dest` already has one.
fn make_room<V: UpstreamSlot>(upstreams: &mut HashMap<Dest, V>, dest: &Dest) {
    if upstreams.contains_key(dest) {
        return;
    }
    upstreams.retain(|_, v| !v.closed());
    while upstreams.len() >= MAX_UPSTREAMS_PER_CONNECTION {
        let Some(victim) = upstreams.keys().next().cloned() else {
            break;
        };
        upstreams.remove(&victim);
    }
}

/// A cached upstream connection, as far as [`make_room`] cares.
trait UpstreamSlot {
    fn closed(&self) -> bool;
}

impl UpstreamSlot for (SendRequest<Counted>, SocketAddr) {
    fn closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// State of one client connection: the cached upstream connections.
struct HttpConn<'a> {
    proxy: &'a Proxy,
    client: ClientAddr,
    orig: OrigDst,
    /// One upstream HTTP/1 connection per destination, reused across keep-alive requests.
    /// hyper serves an HTTP/1 connection's requests one at a time, so this lock is never
    /// contended.
    upstreams: Mutex<HashMap<Dest, (SendRequest<Counted>, SocketAddr)>>,
}

impl HttpConn<'_> {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<ResBody>, Infallible> {
        let mut pending = request_record(self, &req);
        let resp = self.route(req, &mut pending).await;
        pending.rec.status = Some(resp.status().as_u16());
        Ok(resp.map(|inner| AuditedBody::new(inner, pending).boxed_unsync()))
    }

    async fn route(&self, req: Request<Incoming>, p: &mut PendingRecord) -> Response<ResBody> {
        let limit = self.proxy.config.limits.max_header_bytes;
        if let Some(reason) = limits::head_too_large(&req, limit) {
            let host = host_header(req.headers()).ok();
            p.rec.name = host.as_ref().map(ToString::to_string);
            p.rec.reason.clone_from(&reason);
            let denial = Denial {
                host,
                port: self.orig.0.port(),
                reason,
                rule: None,
            };
            return respond::boxed(respond::header_too_large(&denial));
        }
        if req.method() == Method::CONNECT {
            let host = req
                .uri()
                .authority()
                .and_then(|a| normalize_host(a.as_str()));
            p.rec.name = host.as_ref().map(ToString::to_string);
            return self.refuse(p, host, NOT_A_FORWARD_PROXY, None);
        }
        let host = match host_header(req.headers()) {
            Ok(h) => h,
            Err(reason) => {
                p.rec.reason = reason.to_owned();
                return respond::boxed(respond::bad_request(reason));
            }
        };
        p.rec.name = Some(host.to_string());
        if let Some(auth) = req.uri().authority()
            && normalize_host(auth.as_str()).as_ref() != Some(&host)
        {
            return self.refuse(p, Some(host), AUTHORITY_MISMATCH, None);
        }
        let head = Classified::Http(HttpHead {
            host: Some(host.clone()),
        });
        let verdict = decide(&self.proxy.config.policy, &head, self.orig.0);
        let decision = verdict.decision();
        let rule = decision.rule.as_ref().map(ToString::to_string);
        p.rec.rule.clone_from(&rule);
        let reason = decision.reason.to_string();
        p.rec.code = Some(decision.reason.code());
        match verdict {
            // `decide` never intercepts plain HTTP (`decide_tls` does, for TLS).
            Verdict::Deny { .. } | Verdict::Intercept { .. } => {
                self.refuse(p, Some(host), &reason, rule)
            }
            Verdict::PassThrough { dest, decision } => {
                if req.headers().contains_key(UPGRADE) {
                    return self.refuse(p, Some(host), UPGRADE_REFUSED, rule);
                }
                let body_limit = self.proxy.config.limits.max_body_bytes;
                if let Some(over) = BodyTooLarge::declared(&req, body_limit) {
                    return self.body_too_large(p, Some(host), &over, rule);
                }
                p.rec.reason = reason;
                // Recorded as going ahead from here: a client that leaves while egressd
                // connects ended early, it was not denied (body.rs).
                p.rec.went_ahead(&decision);
                let went_ahead = decision.clone();
                self.forward(req, dest, decision.reach(), p, rule, &went_ahead)
                    .await
            }
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        dest: Dest,
        reach: egressd_config::Reach,
        p: &mut PendingRecord,
        rule: Option<String>,
        decision: &egressd_config::Decision,
    ) -> Response<ResBody> {
        let mut upstreams = self.upstreams.lock().await;
        if upstreams.get(&dest).is_some_and(|(s, _)| s.is_closed()) {
            upstreams.remove(&dest);
        }
        make_room(&mut upstreams, &dest);
        let (sender, addr) = match upstreams.entry(dest.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                match self.open_upstream(&dest, reach).await {
                    Ok(up) => v.insert(up),
                    Err((kind, reason)) => {
                        if kind.is_denial() {
                            // Refused after all (a private answer): a denial.
                            p.rec.decision = AuditDecision::Deny;
                        } else {
                            p.rec.went_ahead_and_failed(decision);
                        }
                        p.rec.reason.clone_from(&reason);
                        let denial = Denial {
                            host: Some(dest.host.clone()),
                            port: dest.port,
                            reason,
                            rule,
                        };
                        return respond::boxed(respond::upstream_failed(kind, &denial));
                    }
                }
            }
        };
        p.rec.went_ahead(decision);
        p.rec.upstream = Some(*addr);
        let body_limit = self.proxy.config.limits.max_body_bytes;
        let req = upstream_request(req, Arc::clone(&p.sent), body_limit);
        let idle = self.proxy.config.timeouts.idle;
        let result = async {
            sender.ready().await?;
            sender.send_request(req).await
        };
        let failure = match tokio::time::timeout(idle, result).await {
            Ok(Ok(mut resp)) => {
                strip_hop_by_hop(resp.headers_mut());
                return resp.map(BodyExt::boxed_unsync);
            }
            Ok(Err(_)) if p.sent.over_limit() => {
                // The upstream connection saw an aborted request and is not reusable.
                upstreams.remove(&dest);
                let over = BodyTooLarge {
                    limit: body_limit.unwrap_or_default(),
                };
                return self.body_too_large(p, Some(dest.host), &over, rule);
            }
            Ok(Err(e)) => (
                ErrorKind::UpstreamUnreachable,
                format!("upstream request failed: {e}"),
            ),
            Err(_) => (
                ErrorKind::UpstreamTimeout,
                "upstream response timed out".to_owned(),
            ),
        };
        upstreams.remove(&dest);
        p.rec.reason.clone_from(&failure.1);
        let denial = Denial {
            host: Some(dest.host),
            port: dest.port,
            reason: failure.1,
            rule,
        };
        respond::boxed(respond::upstream_failed(failure.0, &denial))
    }

    /// Resolves, guards and dials `dest`, then starts an HTTP/1 client connection on it.
    async fn open_upstream(
        &self,
        dest: &Dest,
        reach: egressd_config::Reach,
    ) -> Result<(SendRequest<Counted>, SocketAddr), (ErrorKind, String)> {
        let up = self
            .proxy
            .connector
            .connect(&dest.host, dest.port, reach)
            .await
            .map_err(|e| (ErrorKind::of(&e), chain(&e)))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up.stream))
            .await
            .map_err(|e| {
                (
                    ErrorKind::UpstreamUnreachable,
                    format!("upstream handshake: {e}"),
                )
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP connection ended with an error");
            }
        });
        Ok((sender, up.addr))
    }

    /// `413` for a body over `limits.max_body_bytes`; the decision stays as it was (the
    /// destination was allowed), the reason says what stopped the request.
    fn body_too_large(
        &self,
        p: &mut PendingRecord,
        host: Option<HostName>,
        over: &BodyTooLarge,
        rule: Option<String>,
    ) -> Response<ResBody> {
        p.rec.decision = AuditDecision::Deny;
        p.rec.reason = over.to_string();
        let denial = Denial {
            host,
            port: self.orig.0.port(),
            reason: over.to_string(),
            rule,
        };
        respond::boxed(respond::body_too_large(&denial))
    }

    fn refuse(
        &self,
        p: &mut PendingRecord,
        host: Option<HostName>,
        reason: &str,
        rule: Option<String>,
    ) -> Response<ResBody> {
        p.rec.decision = AuditDecision::Deny;
        reason.clone_into(&mut p.rec.reason);
        let denial = Denial {
            host,
            port: self.orig.0.port(),
            reason: reason.to_owned(),
            rule,
        };
        respond::boxed(respond::forbidden(&denial))
    }
}

/// The single `Host` header, parsed; the error is the `400` reason.
fn host_header(headers: &HeaderMap) -> Result<HostName, &'static str> {
    let mut all = headers.get_all(HOST).iter();
    let Some(value) = all.next() else {
        return Err("missing Host header");
    };
    if all.next().is_some() {
        return Err("several Host headers");
    }
    value
        .to_str()
        .ok()
        .and_then(normalize_host)
        .ok_or("unparseable Host header")
}

/// Turns a client request into the upstream one: origin-form target, no hop-by-hop
/// headers, body counted into `sent` up to `body_limit`.
fn upstream_request(
    req: Request<Incoming>,
    sent: Arc<Sent>,
    body_limit: Option<u64>,
) -> Request<Counted> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = path
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    strip_hop_by_hop(&mut parts.headers);
    Request::from_parts(parts, Counted::new(body, sent, body_limit))
}

/// The audit record a plain-HTTP request starts with.
fn request_record(conn: &HttpConn<'_>, req: &Request<Incoming>) -> PendingRecord {
    let mut rec = Record::new(
        &conn.proxy.sandbox,
        conn.client.0,
        Some(conn.orig.0),
        Proto::Http,
    );
    rec.method = Some(req.method().as_str().to_owned());
    let path = req.uri().path();
    // URI paths are ASCII (the `http` crate rejects other bytes), so any index is a
    // character boundary.
    rec.path = Some(path.get(..MAX_AUDIT_PATH).unwrap_or(path).to_owned());
    PendingRecord::new(Arc::clone(&conn.proxy.audit), rec)
}

#[cfg(test)]
mod upstream_cache_tests {
    use super::*;

    struct Slot(bool);

    impl UpstreamSlot for Slot {
        fn closed(&self) -> bool {
            self.0
        }
    }

    fn dest(n: usize) -> Dest {
        Dest {
            host: crate::host::HostName::Name(format!("h{n}.test")),
            port: 80,
        }
    }

    #[test]
    fn a_connection_keeps_a_bounded_number_of_upstreams() {
        let mut cache = HashMap::new();
        for n in 0..100 {
            make_room(&mut cache, &dest(n));
            cache.insert(dest(n), Slot(false));
            assert!(
                cache.len() <= MAX_UPSTREAMS_PER_CONNECTION,
                "{}",
                cache.len()
            );
        }
        // An existing destination keeps its connection; closed ones go first.
        let kept: Vec<Dest> = cache.keys().cloned().collect();
        make_room(&mut cache, &kept[0]);
        assert_eq!(cache.len(), MAX_UPSTREAMS_PER_CONNECTION);
        cache.get_mut(&kept[1]).unwrap().0 = true;
        make_room(&mut cache, &dest(1000));
        assert!(!cache.contains_key(&kept[1]));
        assert_eq!(cache.len(), MAX_UPSTREAMS_PER_CONNECTION - 1);
    }
}
