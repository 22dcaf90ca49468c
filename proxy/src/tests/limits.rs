//! Limits on loopback: the per-sandbox connection limit, the request-head timeout of
//! kept-alive plain-HTTP connections, and `431` for oversize heads.

use std::net::SocketAddr;
use std::time::Duration;

use egressd_config::{Limits, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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
