//! The sandbox's DNS listener: answers allowed names, refuses the rest without asking anyone.
//!
//! The kernel sends every UDP datagram a sandbox addresses to port 53 here (whatever resolver
//! it names: `/etc/resolv.conf`, `127.0.0.53`, a hard-coded public resolver), and the proxy
//! hands TCP connections to port 53 to [`serve_tcp`]. Each query is decided by [`decide`], a
//! pure function of the policy and the question:
//!
//! * a name the allowlist covers, asking for `A` or `AAAA`: resolved with the proxy's own
//!   resolver (or the `--resolve` overrides) and answered, CNAME chain included;
//! * a name the allowlist covers, asking for anything else (`TXT`, `MX`, `SRV`, `HTTPS`/`SVCB`,
//!   `ANY`, ...): an empty answer (NOERROR, no records), without asking upstream. Dropping
//!   `HTTPS`/`SVCB` also keeps ECH configurations out of the sandbox;
//! * every other name: `NXDOMAIN`, without sending anything upstream;
//! * [`ATTACHED_PROBE`] (`attached.egressd.invalid`, a name no real resolver answers):
//!   `127.0.0.1`, whatever the policy. A Kubernetes init container waits on it, so that the
//!   pod's other containers start only once the pod is attached (`deploy/`).
//!
//! One audit record per query (name, type, decision, answer count).
//!
//! # Security
//!
//! A denied name never leaves the machine: it is answered from here before any lookup. That
//! is what stops `<secret>.attacker.example` exfiltration. Malformed messages get `FORMERR`
//! (or nothing, when not even the header parses) and never panic.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use egressd_config::{DnsDenied, Policy, Reason, Scheme, Target, TargetHost};
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{DNSClass, Name, RData, Record as DnsRecord, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Proxy;
use crate::audit::{AuditDecision, Proto, Record};

/// Largest UDP answer for a client that sent no EDNS option (RFC 1035).
const PLAIN_UDP_LIMIT: usize = 512;
/// Largest UDP answer we send even when the client offers more (the DNS flag day value).
const EDNS_UDP_LIMIT: u16 = 1232;
/// Longest time a DNS-over-TCP client may stay silent between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Most queries answered on one DNS-over-TCP connection.
const TCP_MAX_QUERIES: usize = 100;
/// Answers are cached by clients for at most this long: the allowlist may change.
const MAX_TTL: u32 = 300;
/// TTL of answers built from `--resolve` overrides.
const OVERRIDE_TTL: u32 = 60;
/// Receive buffer for one UDP query.
const UDP_BUF: usize = 4096;
/// Most UDP queries answered at once; beyond that new queries are dropped (the client
/// retries), so a flood cannot pile up tasks and upstream lookups.
const MAX_IN_FLIGHT: usize = 256;

/// What to do with one query: the pure part of answering.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DnsVerdict {
    /// Resolve `name` for `rtype` (A or AAAA) and answer.
    Resolve {
        /// Lowercase, no trailing dot.
        name: String,
        /// `A` or `AAAA`.
        rtype: RecordType,
        /// The deciding allowlist entry (`Entry`'s Display).
        rule: Option<String>,
        /// Audit-only mode: why it would have been refused (recorded as an unenforced deny).
        unenforced: Option<String>,
    },
    /// An allowed name, a type we do not answer: NOERROR with no records.
    NoData {
        /// Lowercase, no trailing dot.
        name: String,
        /// The deciding allowlist entry.
        rule: Option<String>,
        /// Audit-only mode: why it would have been refused.
        unenforced: Option<String>,
    },
    /// Refuse with `rcode` and say why.
    Refuse {
        /// The name, when the question had one.
        name: Option<String>,
        /// NXDOMAIN for denied names, FORMERR/NOTIMP/REFUSED for broken or odd queries.
        rcode: ResponseCode,
        /// The audit reason.
        reason: String,
        /// The policy reason's code, when the policy refused the name.
        code: Option<&'static str>,
        /// The deciding blocklist entry, if any.
        rule: Option<String>,
    },
}

/// Decides a parsed query against the policy; `denied` is the answer for names it does not
/// cover. No I/O.
pub(crate) fn decide(policy: &Policy, denied: DnsDenied, query: &Message) -> DnsVerdict {
    let refuse = |name: Option<String>, rcode, reason: &str| DnsVerdict::Refuse {
        name,
        rcode,
        reason: reason.to_owned(),
        code: None,
        rule: None,
    };
    if query.metadata.op_code != OpCode::Query {
        return refuse(
            None,
            ResponseCode::NotImp,
            "only standard queries are answered",
        );
    }
    let [question] = query.queries.as_slice() else {
        return refuse(
            None,
            ResponseCode::FormErr,
            "a query must ask exactly one question",
        );
    };
    let ascii = question.name().to_ascii();
    let name = ascii
        .strip_suffix('.')
        .unwrap_or(&ascii)
        .to_ascii_lowercase();
    if question.query_class() != DNSClass::IN {
        return refuse(
            Some(name),
            ResponseCode::Refused,
            "only class IN is answered",
        );
    }
    // DNS is decided on the name alone: any scheme or port an entry allows will do.
    let decision = policy.decide(&Target {
        host: TargetHost::Name(&name),
        port: 443,
        scheme: Scheme::Https,
    });
    let rule = decision.rule.as_ref().map(ToString::to_string);
    let name_allowed = matches!(
        decision.reason,
        Reason::Allowlisted | Reason::SchemeNotAllowed | Reason::PortNotAllowed
    );
    let unenforced = (!name_allowed && policy.audit_only()).then(|| decision.reason.to_string());
    if !name_allowed && unenforced.is_none() {
        return DnsVerdict::Refuse {
            name: Some(name),
            rcode: match denied {
                DnsDenied::NxDomain => ResponseCode::NXDomain,
                DnsDenied::Refused => ResponseCode::Refused,
            },
            reason: decision.reason.to_string(),
            code: Some(decision.reason.code()),
            rule,
        };
    }
    match question.query_type() {
        rtype @ (RecordType::A | RecordType::AAAA) => DnsVerdict::Resolve {
            name,
            rtype,
            rule,
            unenforced,
        },
        _ => DnsVerdict::NoData {
            name,
            rule,
            unenforced,
        },
    }
}

impl Proxy {
    /// Answers DNS queries arriving on `socket` (the sandbox's DNS listener) until `shutdown`.
    ///
    /// Each query is answered on its own task, so a slow upstream lookup does not hold up
    /// the others. Receive errors are logged and skipped; the loop only ends on `shutdown`.
    pub async fn serve_dns(self: Arc<Self>, socket: UdpSocket, shutdown: CancellationToken) {
        let socket = Arc::new(socket);
        let tasks = TaskTracker::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let mut buf = vec![0u8; UDP_BUF];
        loop {
            // Biased towards receiving: queries queued before shutdown are still answered.
            let (len, peer) = tokio::select! {
                biased;
                received = socket.recv_from(&mut buf) => match received {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "DNS listener receive error");
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::debug!(%peer, "DNS listener busy: query dropped");
                continue;
            };
            let query = buf[..len].to_vec();
            let (proxy, socket) = (Arc::clone(&self), Arc::clone(&socket));
            tasks.spawn(async move {
                let _slot = slot;
                if let Some(reply) = proxy.answer(&query, peer, None, Transport::Udp).await {
                    let _ = socket.send_to(&reply, peer).await;
                }
            });
        }
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
    }

    /// Answers one DNS message; `None` when nothing should be sent back. `orig` is the
    /// resolver the client addressed, when known (TCP).
    async fn answer(
        &self,
        bytes: &[u8],
        client: SocketAddr,
        orig: Option<SocketAddr>,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let started = Instant::now();
        let mut rec = Record::new(&self.sandbox, client, orig, Proto::Dns);
        let ctx = Context {
            policy: &self.config.policy,
            denied: self.config.dns_denied,
            api_proxy: self.api_proxy.is_some(),
            transport,
        };
        let reply = match first_step(&ctx, bytes, &mut rec) {
            Step::Ignore => return None,
            Step::Done(reply) => reply,
            Step::Resolve(pending) => {
                let found = self.lookup_records(&pending.name, pending.rtype).await;
                pending.complete(found, &mut rec, transport)
            }
        };
        self.finish_dns(rec, started);
        reply
    }

    /// Answers for an allowed name: `--resolve` overrides first, else the resolver.
    async fn lookup_records(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<Vec<DnsRecord>, LookupFailure> {
        let owner = Name::from_ascii(format!("{name}.")).map_err(|_| LookupFailure {
            rcode: ResponseCode::FormErr,
            reason: "the name is not a valid DNS name".to_owned(),
        })?;
        if let Some(addrs) = self.connector.override_for(name) {
            return Ok(addrs
                .iter()
                .filter_map(|ip| match (ip, rtype) {
                    (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
                    (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
                    _ => None,
                })
                .map(|rdata| DnsRecord::from_rdata(owner.clone(), OVERRIDE_TTL, rdata))
                .collect());
        }
        match self.connector.lookup(owner, rtype).await {
            Ok(answers) => Ok(answers
                .into_iter()
                .filter(|r| {
                    matches!(
                        r.record_type(),
                        RecordType::A | RecordType::AAAA | RecordType::CNAME
                    )
                })
                .map(|mut r| {
                    r.ttl = r.ttl.min(MAX_TTL);
                    r
                })
                .collect()),
            Err(e) if e.is_nx_domain() => Err(LookupFailure {
                rcode: ResponseCode::NXDomain,
                reason: "the upstream resolver says the name does not exist".to_owned(),
            }),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(LookupFailure {
                rcode: ResponseCode::ServFail,
                reason: format!("upstream resolution failed: {e}"),
            }),
        }
    }

    fn finish_dns(&self, mut rec: Record, started: Instant) {
        rec.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.audit.record(&rec);
    }
}

/// What [`first_step`] needs to know besides the message: no I/O handles.
pub(crate) struct Context<'a> {
    /// The allowlist.
    pub policy: &'a Policy,
    /// The answer for names it does not cover.
    pub denied: DnsDenied,
    /// AWF mode: `api-proxy` is answered with its fixed address.
    pub api_proxy: bool,
    /// How the reply travels (UDP replies must fit the client's buffer).
    pub transport: Transport,
}

/// The outcome of [`first_step`].
pub(crate) enum Step {
    /// Not a query (a response): no reply and no audit record.
    Ignore,
    /// The encoded reply (`None`: send nothing back).
    Done(Option<Vec<u8>>),
    /// An allowed name to resolve before answering.
    Resolve(PendingLookup),
}

/// A reply waiting for the resolution of an allowed name.
pub(crate) struct PendingLookup {
    reply: Message,
    /// Lowercase, no trailing dot.
    pub name: String,
    /// `A` or `AAAA`.
    pub rtype: RecordType,
    client_limit: Option<u16>,
}

impl PendingLookup {
    /// Finishes the reply with the lookup's result, fills in `rec`, and encodes it.
    pub(crate) fn complete(
        mut self,
        found: Result<Vec<DnsRecord>, LookupFailure>,
        rec: &mut Record,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        match found {
            Ok(records) => {
                if rec.enforced {
                    "in the allowlist".clone_into(&mut rec.reason);
                }
                rec.answers = Some(u32::try_from(records.len()).unwrap_or(u32::MAX));
                self.reply.add_answers(records);
            }
            Err(failure) => {
                rec.reason = failure.reason;
                rec.answers = Some(0);
                self.reply.metadata.response_code = failure.rcode;
            }
        }
        encode(&self.reply, transport, self.client_limit)
    }
}

/// Everything of answering `bytes` that needs no I/O: parse, decide, and either the encoded
/// reply or the name to resolve; fills in `rec` (name, type, decision, reason, rule).
///
/// Never panics on any input (fuzzed: `fuzz/fuzz_targets/dns.rs`).
pub(crate) fn first_step(ctx: &Context<'_>, bytes: &[u8], rec: &mut Record) -> Step {
    rec.port = Some(53);
    let query = match Message::from_vec(bytes) {
        Ok(q) => q,
        Err(_) => {
            rec.reason = "malformed DNS message".to_owned();
            // Answer FORMERR when at least the id is there, as resolvers expect.
            let (Some(&hi), Some(&lo)) = (bytes.first(), bytes.get(1)) else {
                return Step::Done(None);
            };
            let id = u16::from_be_bytes([hi, lo]);
            return Step::Done(encode(
                &Message::error_msg(id, OpCode::Query, ResponseCode::FormErr),
                ctx.transport,
                None,
            ));
        }
    };
    if query.metadata.message_type != MessageType::Query {
        return Step::Ignore;
    }
    let mut reply = Message::new(
        query.metadata.id,
        MessageType::Response,
        query.metadata.op_code,
    );
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_UDP_LIMIT);
        reply.set_edns(edns);
    }
    if let Some(q) = query.queries.first() {
        rec.qtype = Some(q.query_type().to_string());
    }
    let client_limit = query.edns.as_ref().map(Edns::max_payload);
    if let Some(answers) = fixed_answer(&query, ATTACHED_PROBE, std::net::Ipv4Addr::LOCALHOST) {
        rec.name = Some(ATTACHED_PROBE.to_owned());
        rec.decision = AuditDecision::Allow;
        rec.reason = "egressd's attachment probe".to_owned();
        rec.answers = Some(u32::try_from(answers.len()).unwrap_or(u32::MAX));
        reply.add_answers(answers);
        return Step::Done(encode(&reply, ctx.transport, client_limit));
    }
    if let Some(answers) = ctx.api_proxy.then(|| api_proxy_answer(&query)).flatten() {
        rec.name = Some(egressd_config::awf::apiproxy::HOST.to_owned());
        rec.decision = AuditDecision::Allow;
        rec.reason = "the api-proxy".to_owned();
        rec.answers = Some(u32::try_from(answers.len()).unwrap_or(u32::MAX));
        reply.add_answers(answers);
        return Step::Done(encode(&reply, ctx.transport, client_limit));
    }
    match decide(ctx.policy, ctx.denied, &query) {
        DnsVerdict::Refuse {
            name,
            rcode,
            reason,
            code,
            rule,
        } => {
            rec.name = name;
            rec.reason = reason;
            rec.code = code;
            rec.rule = rule;
            reply.metadata.response_code = rcode;
        }
        DnsVerdict::NoData {
            name,
            rule,
            unenforced,
        } => {
            rec.name = Some(name);
            rec.rule = rule;
            rec.decision = AuditDecision::Allow;
            rec.reason = "allowed name; only A and AAAA are answered".to_owned();
            rec.answers = Some(0);
            if let Some(reason) = unenforced {
                rec.decision = AuditDecision::Deny;
                rec.enforced = false;
                rec.reason = reason;
            }
        }
        DnsVerdict::Resolve {
            name,
            rtype,
            rule,
            unenforced,
        } => {
            rec.decision = AuditDecision::Allow;
            if let Some(reason) = unenforced {
                rec.decision = AuditDecision::Deny;
                rec.enforced = false;
                rec.reason = reason;
            }
            rec.rule = rule;
            rec.name = Some(name.clone());
            return Step::Resolve(PendingLookup {
                reply,
                name,
                rtype,
                client_limit,
            });
        }
    }
    Step::Done(encode(&reply, ctx.transport, client_limit))
}

/// The name every sandbox's DNS answers with `127.0.0.1` and no other resolver answers
/// (`.invalid`, RFC 2606): resolving it proves the asker is attached.
pub const ATTACHED_PROBE: &str = "attached.egressd.invalid";

/// The answers for `api-proxy` (A: `172.30.0.30`; no AAAA); `None` for any other question.
fn api_proxy_answer(query: &Message) -> Option<Vec<DnsRecord>> {
    fixed_answer(
        query,
        egressd_config::awf::apiproxy::HOST,
        egressd_config::awf::apiproxy::IP,
    )
}

/// The answers when the one question is about `host`: its `A` record `ip` (no AAAA, nothing
/// else); `None` for any other question.
fn fixed_answer(query: &Message, host: &str, ip: std::net::Ipv4Addr) -> Option<Vec<DnsRecord>> {
    let [q] = query.queries.as_slice() else {
        return None;
    };
    let ascii = q.name().to_ascii();
    let name = ascii.strip_suffix('.').unwrap_or(&ascii);
    if !name.eq_ignore_ascii_case(host) || q.query_class() != DNSClass::IN {
        return None;
    }
    let owner = Name::from_ascii(format!("{host}.")).ok()?;
    Some(match q.query_type() {
        RecordType::A => vec![DnsRecord::from_rdata(owner, OVERRIDE_TTL, RData::A(A(ip)))],
        _ => Vec::new(),
    })
}

/// Serves DNS over TCP (RFC 7766 framing: a two-byte length before each message) on a
/// connection the kernel redirected from port 53.
pub(crate) async fn serve_tcp(
    proxy: &Proxy,
    mut stream: TcpStream,
    client: SocketAddr,
    orig: SocketAddr,
) {
    let mut buf = Vec::new();
    for _ in 0..TCP_MAX_QUERIES {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let len = usize::from(u16::from_be_bytes(len));
        buf.resize(len, 0);
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = proxy.answer(&buf, client, Some(orig), Transport::Tcp).await else {
            continue;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// How a message travels: UDP answers must fit the client's buffer, TCP ones need not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// Why an allowed name got no addresses.
#[derive(Debug)]
pub(crate) struct LookupFailure {
    /// The reply's response code.
    pub rcode: ResponseCode,
    /// The audit reason.
    pub reason: String,
}

/// Encodes `reply`; a UDP answer too big for the client is sent truncated (TC set, no
/// records) so that it retries over TCP.
pub(crate) fn encode(
    reply: &Message,
    transport: Transport,
    client_limit: Option<u16>,
) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    let limit = match (transport, client_limit) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => PLAIN_UDP_LIMIT,
        (Transport::Udp, Some(offered)) => usize::from(offered.clamp(512, EDNS_UDP_LIMIT)),
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let mut truncated = Message::new(
        reply.metadata.id,
        MessageType::Response,
        reply.metadata.op_code,
    );
    truncated.metadata = reply.metadata;
    truncated.metadata.truncation = true;
    // The first question only, and none if even that does not fit: a query may carry many
    // long questions (found by fuzzing: the truncated reply to one was over 512 bytes).
    truncated.add_queries(reply.queries.iter().take(1).cloned());
    let bytes = truncated.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    truncated.queries.clear();
    truncated.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use egressd_config::{ConfigBuilder, Origin};
    use hickory_resolver::proto::op::Query;

    fn policy(allow: &str, block: &str) -> Arc<Policy> {
        let mut b = ConfigBuilder::new();
        b.allow_list(allow, Origin::Flag("--allow-domains"))
            .unwrap();
        if !block.is_empty() {
            b.block_list(block, Origin::Flag("--block-domains"))
                .unwrap();
        }
        b.build().unwrap().policy
    }

    fn query(name: &str, rtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m
    }

    #[test]
    fn the_attachment_probe_answers_loopback_whatever_the_policy() {
        let q = query("Attached.Egressd.Invalid.", RecordType::A);
        let answers = fixed_answer(&q, ATTACHED_PROBE, std::net::Ipv4Addr::LOCALHOST).unwrap();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].data, RData::A(A(std::net::Ipv4Addr::LOCALHOST)));
        let aaaa = query("attached.egressd.invalid.", RecordType::AAAA);
        assert_eq!(
            fixed_answer(&aaaa, ATTACHED_PROBE, std::net::Ipv4Addr::LOCALHOST),
            Some(Vec::new())
        );
        let other = query("attached.egressd.invalid.evil.example.", RecordType::A);
        assert!(fixed_answer(&other, ATTACHED_PROBE, std::net::Ipv4Addr::LOCALHOST).is_none());
        // Policy would refuse it: the probe is answered before policy is asked.
        let p = policy("github.com", "");
        assert!(matches!(
            decide(&p, DnsDenied::NxDomain, &q),
            DnsVerdict::Refuse { .. }
        ));
    }

    #[test]
    fn allowed_names_resolve_a_and_aaaa_only() {
        let p = policy("github.com", "");
        for rtype in [RecordType::A, RecordType::AAAA] {
            let v = decide(&p, DnsDenied::NxDomain, &query("API.GitHub.com.", rtype));
            assert_eq!(
                v,
                DnsVerdict::Resolve {
                    name: "api.github.com".into(),
                    rtype,
                    rule: Some("github.com (from --allow-domains)".into()),
                    unenforced: None,
                }
            );
        }
        for rtype in [
            RecordType::TXT,
            RecordType::MX,
            RecordType::SRV,
            RecordType::HTTPS,
            RecordType::SVCB,
            RecordType::ANY,
        ] {
            let v = decide(&p, DnsDenied::NxDomain, &query("api.github.com.", rtype));
            assert!(matches!(v, DnsVerdict::NoData { .. }), "{rtype}: {v:?}");
        }
    }

    #[test]
    fn denied_and_blocked_names_get_nxdomain() {
        let p = policy("github.com", "gist.github.com");
        for name in [
            "secret-data.attacker.example.",
            "gist.github.com.",
            "notgithub.com.",
        ] {
            for rtype in [RecordType::A, RecordType::TXT, RecordType::HTTPS] {
                let v = decide(&p, DnsDenied::NxDomain, &query(name, rtype));
                let DnsVerdict::Refuse { rcode, .. } = v else {
                    panic!("{name} {rtype} should be refused: {v:?}");
                };
                assert_eq!(rcode, ResponseCode::NXDomain);
            }
        }
    }

    #[test]
    fn denied_names_can_be_answered_refused() {
        let p = policy("github.com", "");
        let v = decide(
            &p,
            DnsDenied::Refused,
            &query("evil.example.", RecordType::A),
        );
        assert!(
            matches!(
                v,
                DnsVerdict::Refuse {
                    rcode: ResponseCode::Refused,
                    ..
                }
            ),
            "{v:?}"
        );
    }

    #[test]
    fn scheme_and_port_restricted_entries_still_resolve() {
        let p = policy("http://legacy.example", "");
        let v = decide(
            &p,
            DnsDenied::NxDomain,
            &query("legacy.example.", RecordType::A),
        );
        assert!(matches!(v, DnsVerdict::Resolve { .. }), "{v:?}");
    }

    #[test]
    fn odd_queries_are_refused_with_the_right_code() {
        let p = policy("github.com", "");
        let mut two = query("github.com.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("evil.example.").unwrap(),
            RecordType::A,
        ));
        assert!(matches!(
            decide(&p, DnsDenied::NxDomain, &two),
            DnsVerdict::Refuse {
                rcode: ResponseCode::FormErr,
                ..
            }
        ));
        let mut notify = query("github.com.", RecordType::A);
        notify.metadata.op_code = OpCode::Notify;
        assert!(matches!(
            decide(&p, DnsDenied::NxDomain, &notify),
            DnsVerdict::Refuse {
                rcode: ResponseCode::NotImp,
                ..
            }
        ));
        let mut chaos = Message::query();
        let mut q = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
        q.set_query_class(DNSClass::CH);
        chaos.add_query(q);
        assert!(matches!(
            decide(&p, DnsDenied::NxDomain, &chaos),
            DnsVerdict::Refuse {
                rcode: ResponseCode::Refused,
                ..
            }
        ));
    }

    /// Found by fuzzing (`fuzz/fuzz_targets/dns.rs`): a query with many long questions got a
    /// "truncated" UDP reply that echoed them all and was still over 512 bytes.
    #[test]
    fn a_truncated_reply_fits_even_when_the_questions_do_not() {
        let mut reply = Message::new(3, MessageType::Response, OpCode::Query);
        // Distinct names, so that name compression cannot shrink them.
        for c in ['a', 'b', 'c', 'd'] {
            let long = format!("{0}.{0}.{0}.example.", c.to_string().repeat(60));
            reply.add_query(Query::query(
                Name::from_ascii(&long).unwrap(),
                RecordType::A,
            ));
        }
        let bytes = encode(&reply, Transport::Udp, None).unwrap();
        assert!(bytes.len() <= PLAIN_UDP_LIMIT, "{}", bytes.len());
        let parsed = Message::from_vec(&bytes).unwrap();
        assert!(parsed.metadata.truncation);
        assert_eq!(parsed.metadata.id, 3);
        assert_eq!(parsed.queries.len(), 1);
    }

    #[test]
    fn oversized_udp_answers_are_truncated() {
        let mut reply = Message::new(9, MessageType::Response, OpCode::Query);
        let owner = Name::from_ascii("big.example.").unwrap();
        for i in 0..60u8 {
            reply.add_answer(DnsRecord::from_rdata(
                owner.clone(),
                60,
                RData::A(A([10, 0, 0, i].into())),
            ));
        }
        let plain = encode(&reply, Transport::Udp, None).unwrap();
        assert!(plain.len() <= PLAIN_UDP_LIMIT);
        let parsed = Message::from_vec(&plain).unwrap();
        assert!(parsed.metadata.truncation);
        assert!(parsed.answers.is_empty());
        let tcp = encode(&reply, Transport::Tcp, None).unwrap();
        assert_eq!(Message::from_vec(&tcp).unwrap().answers.len(), 60);
    }
}
