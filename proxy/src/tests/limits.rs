//! Limits on loopback: the per-sandbox connection limit, the request-head timeout of
//! kept-alive plain-HTTP connections, `431` for oversize heads and `413` for oversize
//! bodies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use egressd_config::{Limits, Timeouts};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::{Harness, Setup, http_upstream};
use crate::StaticOrigDst;

/// Reads until EOF or a reset; panics if the connection is still open after `within`.
async fn closed_within(c: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "still open after {within:?}");
    got
}

#[tokio::test]
async fn connections_past_the_limit_are_reset_and_audited() {
    let orig: SocketAddr = "203.0.113.5:443".parse().unwrap();
    let setup = Setup {
        allow: "upstream.test",
        limits: Some(Limits {
            max_connections: 2,
            ..Limits::default()
        }),
        ..Setup::default()
    };
    let h = Harness::start(&setup, StaticOrigDst::always(orig)).await;
    let a = TcpStream::connect(h.addr).await.unwrap();
    let b = TcpStream::connect(h.addr).await.unwrap();
    let mut over = TcpStream::connect(h.addr).await.unwrap();
    closed_within(&mut over, Duration::from_secs(2)).await;
    let recs = h.records(1).await;
    assert_eq!(recs[0]["decision"], "deny");
    assert_eq!(
        recs[0]["reason"],
        "connection limit reached: 2 connections open (limits.max_connections)"
    );
    assert_eq!(recs[0]["orig_dst"], orig.to_string());

    // Closing the two frees their slots: the next connection is served (classified), not
    // reset.
    drop((a, b));
    h.records(3).await;
    let mut next = TcpStream::connect(h.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let still_open = tokio::time::timeout(Duration::from_millis(300), next.read(&mut byte)).await;
    assert!(
        still_open.is_err(),
        "a freed slot was not reused: {still_open:?}"
    );
    drop(next);
    h.records(4).await;
    h.stop().await;
}

#[tokio::test]
async fn a_slow_head_on_a_kept_alive_connection_is_cut_off() {
    let up = http_upstream().await;
    let setup = Setup {
        allow: "upstream.test",
        resolve: &["upstream.test:127.0.0.1"],
        ports: &[up.port()],
        timeouts: Some(Timeouts {
            request_head: Duration::from_secs(1),
            resolve: Duration::from_millis(500),
            ..Timeouts::default()
        }),
        ..Setup::default()
    };
    let forged: SocketAddr = format!("203.0.113.50:{}", up.port()).parse().unwrap();
    let h = Harness::start(&setup, StaticOrigDst::always(forged)).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(b"GET /one HTTP/1.1\r\nHost: upstream.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    // The second head arrives one byte every 200 ms: cut off one second after the response.
    let started = Instant::now();
    let (mut rd, mut wr) = c.into_split();
    let drip = tokio::spawn(async move {
        for b in b"GET /two HTTP/1.1\r\nHost: upstream.test\r\n\r\n" {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut rest)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "the slow request was answered"
    );
    drip.abort();
    h.stop().await;
}

#[tokio::test]
async fn an_oversize_first_head_gets_431_and_a_deny_record() {
    let orig: SocketAddr = "203.0.113.5:80".parse().unwrap();
    let setup = Setup {
        allow: "upstream.test",
        limits: Some(Limits {
            max_header_bytes: 1024,
            ..Limits::default()
        }),
        ..Setup::default()
    };
    let h = Harness::start(&setup, StaticOrigDst::always(orig)).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    let mut head = b"GET / HTTP/1.1\r\nHost: upstream.test\r\nCookie: ".to_vec();
    head.resize(3000, b'c');
    c.write_all(&head).await.unwrap();
    let got = closed_within(&mut c, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with(
            "egressd: denied (no host):80: HTTP request head larger than 1024 bytes \
             (limits.max_header_bytes) (rule: none)\n"
        ),
        "{text}"
    );
    let recs = h.records(1).await;
    assert_eq!(recs[0]["decision"], "deny");
    assert_eq!(recs[0]["proto"], "http");
    assert_eq!(
        recs[0]["reason"],
        "HTTP request head larger than 1024 bytes (limits.max_header_bytes)"
    );
    h.stop().await;
}

/// An HTTP/1 upstream that reads each request body to its end before answering
/// `got N bytes`; counts the bodies it received whole.
async fn body_reading_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let whole = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&whole);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let counter = Arc::clone(&counter);
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        counter.fetch_add(1, Ordering::SeqCst);
                        let text = format!("got {} bytes", body.len());
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(text))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, whole)
}

/// Sends `chunks` as a chunked body, one chunk per write; returns everything read back.
async fn post_chunked(c: &mut TcpStream, chunks: &[usize]) -> String {
    c.write_all(b"POST /up HTTP/1.1\r\nHost: upstream.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for &len in chunks {
        let mut chunk = format!("{len:x}\r\n").into_bytes();
        chunk.resize(chunk.len() + len, b'x');
        chunk.extend_from_slice(b"\r\n");
        if c.write_all(&chunk).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = c.write_all(b"0\r\n\r\n").await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(5).any(|w| w == b"bytes") || got.ends_with(b")\n") {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_are_never_forwarded_whole() {
    let (up, whole) = body_reading_upstream().await;
    let setup = Setup {
        allow: "upstream.test",
        resolve: &["upstream.test:127.0.0.1"],
        ports: &[up.port()],
        limits: Some(Limits {
            max_body_bytes: Some(1000),
            ..Limits::default()
        }),
        ..Setup::default()
    };
    let forged: SocketAddr = format!("203.0.113.50:{}", up.port()).parse().unwrap();
    let h = Harness::start(&setup, StaticOrigDst::always(forged)).await;

    // Declared too large: refused before anything is forwarded.
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(b"POST /up HTTP/1.1\r\nHost: upstream.test\r\nContent-Length: 1001\r\n\r\n")
        .await
        .unwrap();
    let got = closed_within(&mut c, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            "egressd: denied upstream.test:{}: request body larger than 1000 bytes \
             (limits.max_body_bytes) (rule: upstream.test (from --allow-domains))\n",
            up.port()
        )),
        "{text}"
    );

    // Chunked, crossing the limit on the third chunk: the upstream sees an aborted body.
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    let text = post_chunked(&mut c, &[400, 400, 400]).await;
    assert!(
        text.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{text}"
    );

    // Under the limit: forwarded whole.
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    let text = post_chunked(&mut c, &[400, 400, 200]).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("got 1000 bytes"), "{text}");
    assert_eq!(
        whole.load(Ordering::SeqCst),
        1,
        "only the body under the limit arrived"
    );

    let recs = h.records(3).await;
    let reason = "request body larger than 1000 bytes (limits.max_body_bytes)";
    for rec in &recs[..2] {
        assert_eq!(rec["decision"], "deny", "{rec}");
        assert_eq!(rec["reason"], reason, "{rec}");
        assert_eq!(rec["status"], 413, "{rec}");
    }
    assert_eq!(recs[2]["decision"], "allow", "{}", recs[2]);
    assert_eq!(recs[2]["status"], 200, "{}", recs[2]);
    assert_eq!(recs[0]["bytes_up"], 0, "{}", recs[0]);
    assert_eq!(recs[1]["bytes_up"], 800, "{}", recs[1]);
    assert_eq!(recs[2]["bytes_up"], 1000, "{}", recs[2]);
    h.stop().await;
}

/// What one connection's task holds while it waits is the size of `Proxy::handle`'s future
/// plus the boxed stage it is in: the stages that may wait long (classify, resolve and
/// connect, relay, intercept, plain HTTP, the api-proxy, DNS) are boxed, so the future itself
/// stays small. 10,000 idle connections at the size this guards cost under 40 MiB.
#[tokio::test]
async fn a_connections_task_holds_a_small_future() {
    let h = Harness::start(&Setup::default(), StaticOrigDst::none()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let _client = TcpStream::connect(local).await.unwrap();
    let (stream, peer) = listener.accept().await.unwrap();
    let handled = Arc::clone(&h.proxy).handle(stream, crate::ClientAddr(peer), local, None);
    let size = std::mem::size_of_val(&handled);
    assert!(size <= 3 * 1024, "Proxy::handle's future is {size} bytes");
    drop(handled);
    h.stop().await;
}
