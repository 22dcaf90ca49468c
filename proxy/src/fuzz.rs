//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; the daemon never turns it
//! on).
//!
//! Each function takes arbitrary bytes, runs one parser the sandbox can reach, and panics if
//! one of the properties the rest of the proxy relies on breaks (a panic inside the parser
//! is a finding too). None of them opens a socket or resolves a name.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use egressd_config::{ConfigBuilder, Origin, Policy};
use hickory_resolver::proto::op::{Message, MessageType};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{RData, Record as DnsRecord, RecordType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::addr::{ClientAddr, OrigDst};
use crate::audit::{AuditDecision, Proto, Record};
use crate::conn::classify::{Classified, classify_inner, has_ech_extension};
use crate::dns::{self, Step, Transport};
use crate::host::{HostName, normalize_host};
use crate::{AuditLog, Proxy};

/// The head limit the classification target runs with (small, so fuzz inputs reach it).
const FUZZ_MAX_HEAD: usize = 2048;

/// First-bytes classification (`conn/classify.rs`): the input's first byte sets how many
/// bytes each read returns (1 to 256), the rest is what the client sends.
///
/// Checks that a classification only consumes bytes the client sent, that a `Host` name
/// is normalised (lowercase, no port, no trailing dot, a fixed point of `normalize_host`),
/// that an SNI is a lowercase DNS name, and that a too-large head is reported at the limit.
///
/// # Panics
///
/// When one of these properties breaks, or when the parser panics.
pub fn classify(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let _ = has_ech_extension(stream);
    let mut reader = Chunked {
        data: stream,
        chunk: usize::from(chunk) + 1,
    };
    let mut buf = Vec::new();
    let result = poll_ready(classify_inner(&mut reader, &mut buf, FUZZ_MAX_HEAD));
    assert!(
        stream.starts_with(&buf),
        "the buffer holds bytes the client did not send"
    );
    match result {
        Ok(Classified::Http(head)) => {
            if let Some(host) = &head.host {
                check_host(host);
            }
        }
        Ok(Classified::Tls(hello)) => {
            if let Some(sni) = &hello.sni {
                assert!(
                    !sni.is_empty()
                        && sni.bytes().all(|b| b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || b == b'-'
                            || b == b'.'
                            || b == b'_'),
                    "SNI {sni:?} is not a lowercase DNS name"
                );
            }
        }
        Err(crate::ClassifyError::HttpHeadTooLarge { limit }) => {
            assert_eq!(limit, FUZZ_MAX_HEAD);
            assert!(buf.len() >= limit, "head refused below the limit");
        }
        Err(_) => {}
    }
    if let Ok(text) = std::str::from_utf8(stream)
        && let Some(host) = normalize_host(text)
    {
        check_host(&host);
    }
}

/// Plain-HTTP request handling (`conn/http.rs`, on hyper's HTTP/1 server): the input is what
/// one client sends on a connection to a proxy whose allowlist is empty.
///
/// Checks that every response is a refusal (4xx) and that no name was ever resolved: with
/// nothing allowed, no byte sequence gets a request forwarded.
///
/// # Panics
///
/// When a response is not 4xx, a lookup happened, or hyper or egressd panics.
pub fn http_head(data: &[u8]) {
    let proxy = deny_all_proxy();
    let client = ClientAddr(SocketAddr::from(([127, 0, 0, 1], 40000)));
    let orig = OrigDst(SocketAddr::from(([192, 0, 2, 1], 80)));
    let out = runtime().block_on(async {
        let (mut near, far) = tokio::io::duplex(64 * 1024);
        let server = crate::conn::http::serve(&proxy, far, client, orig);
        let talk = async {
            let _ = near.write_all(data).await;
            let _ = near.shutdown().await;
            let mut out = Vec::new();
            let _ = near.read_to_end(&mut out).await;
            out
        };
        tokio::join!(server, talk).1
    });
    check_refusals(&out);
    assert_eq!(
        proxy.connector.lookups.load(Ordering::Relaxed),
        0,
        "a name was resolved with an empty allowlist"
    );
}

/// The DNS listener's handling of one query packet (`dns.rs`, everything but the upstream
/// lookup, which returns a fixed address): the first input byte picks UDP or TCP and AWF
/// mode, the rest is the packet. The allowlist is `allowed.test`.
///
/// Checks that a reply parses, answers the query's id, fits a UDP client's buffer, and
/// carries records only for allowed names.
///
/// # Panics
///
/// When one of these properties breaks, or when the DNS code panics.
pub fn dns(data: &[u8]) {
    let Some((&flags, packet)) = data.split_first() else {
        return;
    };
    let transport = if flags & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let ctx = dns::Context {
        policy: dns_policy(),
        denied: egressd_config::DnsDenied::NxDomain,
        api_proxy: flags & 2 != 0,
        transport,
    };
    let sandbox: Arc<str> = Arc::from("fuzz");
    let mut rec = Record::new(
        &sandbox,
        SocketAddr::from(([127, 0, 0, 1], 40000)),
        None,
        Proto::Dns,
    );
    let reply = match dns::first_step(&ctx, packet, &mut rec) {
        Step::Ignore => return,
        Step::Done(reply) => reply,
        Step::Resolve(pending) => {
            let rdata = match pending.rtype {
                RecordType::AAAA => RData::AAAA(AAAA([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1].into())),
                _ => RData::A(A([192, 0, 2, 1].into())),
            };
            let owner = hickory_resolver::proto::rr::Name::from_ascii(format!("{}.", pending.name));
            let records = owner
                .map(|o| vec![DnsRecord::from_rdata(o, 60, rdata)])
                .unwrap_or_default();
            pending.complete(Ok(records), &mut rec, transport)
        }
    };
    let Some(reply) = reply else {
        return;
    };
    let query = Message::from_vec(packet).ok();
    let limit = match (transport, query.as_ref().and_then(|q| q.edns.as_ref())) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => 512,
        (Transport::Udp, Some(edns)) => usize::from(edns.max_payload().clamp(512, 1232)),
    };
    assert!(
        reply.len() <= limit,
        "{} byte reply over {limit}",
        reply.len()
    );
    let parsed = Message::from_vec(&reply).expect("egressd's own reply parses");
    assert_eq!(parsed.metadata.message_type, MessageType::Response);
    if let Some(query) = &query {
        assert_eq!(parsed.metadata.id, query.metadata.id);
    }
    if rec.decision == AuditDecision::Deny {
        assert!(parsed.answers.is_empty(), "a refused query got answers");
    }
    for answer in &parsed.answers {
        let ascii = answer.name.to_ascii().to_ascii_lowercase();
        let name = ascii.strip_suffix('.').unwrap_or(&ascii);
        assert!(
            name == "allowed.test"
                || name.ends_with(".allowed.test")
                || name == egressd_config::awf::apiproxy::HOST,
            "answer for a name outside the allowlist: {name}"
        );
    }
}

// === helpers ===

/// A reader that hands out `data` at most `chunk` bytes per read and never blocks.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Polls `fut` once: it must finish, as it only reads from a reader that never blocks.
fn poll_ready<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("classification waited on a reader that never blocks"),
    }
}

/// A `Host` name as classification returns it: normalised and stable.
fn check_host(host: &HostName) {
    if let HostName::Name(n) = host {
        assert!(
            !n.is_empty()
                && !n.ends_with('.')
                && n.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'.'
                    || b == b'_'),
            "host {n:?} is not normalised"
        );
        assert_eq!(
            normalize_host(n).as_ref(),
            Some(host),
            "normalising {n:?} again changes it"
        );
    }
}

/// Every HTTP response in `out` (as far as it parses) is a 4xx.
fn check_refusals(mut out: &[u8]) {
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = resp.parse(out) else {
            panic!(
                "egressd wrote something that is not an HTTP response: {:?}",
                String::from_utf8_lossy(out)
            );
        };
        let code = resp.code.unwrap_or(0);
        assert!(
            (400..500).contains(&code),
            "status {code} with nothing allowed"
        );
        let body = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        out = out.get(len + body..).unwrap_or_default();
    }
}

/// A current-thread runtime with paused time: hyper's timers fire as soon as nothing else
/// can run, so every exchange ends quickly and the same way.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime builds")
    })
}

/// A fresh proxy (no state carried between inputs) that allows nothing, with an audit log
/// that writes nowhere and a resolver that is never asked.
fn deny_all_proxy() -> Arc<Proxy> {
    let mut b = ConfigBuilder::new();
    // Never used (nothing is allowed); the discard port fails fast if it were.
    b.dns_server("127.0.0.1:9")
        .expect("a literal DNS server address parses");
    let config = Arc::new(b.build().expect("an empty configuration builds"));
    let audit = Arc::new(AuditLog::new(None).expect("an audit log without a file opens"));
    let orig = Arc::new(crate::addr::StaticOrigDst::none());
    Arc::new(Proxy::new(config, orig, audit, "fuzz".into()).expect("the proxy builds"))
}

/// The policy of the DNS target: `allowed.test` and its subdomains.
fn dns_policy() -> &'static Policy {
    static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();
    POLICY.get_or_init(|| {
        let mut b = ConfigBuilder::new();
        b.allow_list("allowed.test", Origin::Flag("--allow-domains"))
            .expect("a literal allowlist parses");
        b.build().expect("a literal allowlist builds").policy
    })
}
