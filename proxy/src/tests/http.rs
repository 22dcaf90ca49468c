//! Plain HTTP/1 through the proxy: per-request decisions and the refusal formats.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Harness, Setup, http_upstream};
use crate::StaticOrigDst;

async fn setup_http() -> (Harness, SocketAddr) {
    let up = http_upstream().await;
    let forged: SocketAddr = format!("203.0.113.50:{}", up.port()).parse().unwrap();
    let setup = Setup {
        allow: "upstream.test",
        resolve: &["upstream.test:127.0.0.1"],
        ports: &[up.port()],
        ..Setup::default()
    };
    (
        Harness::start(&setup, StaticOrigDst::always(forged)).await,
        up,
    )
}

/// Keep-alive: the second request on the same connection names another host and is decided
/// on its own `Host`, not on the first one's.
#[tokio::test]
async fn keep_alive_requests_are_decided_one_by_one() {
    let (h, up) = setup_http().await;
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);

    let req = Request::get("/hello?token=secret")
        .header(HOST, "upstream.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        "hello from upstream: upstream.test /hello?token=secret"
    );

    send.ready().await.unwrap();
    let req = Request::get("/steal")
        .header(HOST, "evil.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(
        resp.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        format!(
            "egressd: denied evil.test:{}: not in the allowlist (rule: none)\n",
            up.port()
        )
    );
    drop(send);

    let recs = h.records(2).await;
    let (a, b) = (&recs[0], &recs[1]);
    assert_eq!(a["proto"], "http");
    assert_eq!(a["decision"], "allow");
    assert_eq!(a["name"], "upstream.test");
    assert_eq!(a["method"], "GET");
    assert_eq!(
        a["path"], "/hello",
        "the query string never reaches the audit log"
    );
    assert_eq!(a["upstream"], up.to_string());
    assert_eq!(a["rule"], "upstream.test (from --allow-domains)");
    assert!(a["bytes_down"].as_u64().unwrap() > 0);
    assert_eq!(b["decision"], "deny");
    assert_eq!(b["name"], "evil.test");
    assert_eq!(b["path"], "/steal");
    assert_eq!(b["reason"], "not in the allowlist");
    assert!(b["upstream"].is_null());
    let raw = std::fs::read_to_string(&h.audit_path).unwrap();
    assert!(!raw.contains("secret"), "{raw}");
    assert_eq!(h.lookups(), 0);
    h.stop().await;
}

/// Sends `raw` on a fresh connection and returns everything the proxy answers.
async fn exchange(h: &Harness, raw: &str) -> String {
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    tcp.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn refusals_use_the_respond_formats() {
    let (h, up) = setup_http().await;
    let port = up.port();

    let resp = exchange(
        &h,
        "GET http://evil.test/ HTTP/1.1\r\nHost: upstream.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.ends_with(&format!(
        "egressd: denied upstream.test:{port}: request target names a different host than the \
         Host header (rule: none)\n"
    )));

    let resp = exchange(
        &h,
        "CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("egressd is not a forward proxy"), "{resp}");

    let resp = exchange(&h, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.0 400") || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );
    assert!(
        resp.ends_with("egressd: bad request: missing Host header\n"),
        "{resp}"
    );

    let resp = exchange(
        &h,
        "GET /ws HTTP/1.1\r\nHost: upstream.test\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("protocol upgrades"), "{resp}");
    assert!(
        resp.contains("(rule: upstream.test (from --allow-domains))"),
        "{resp}"
    );

    // Absolute form naming the same host is fine and reaches the upstream in origin form.
    let resp = exchange(
        &h,
        "GET http://upstream.test/abs HTTP/1.1\r\nHost: upstream.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.ends_with("hello from upstream: upstream.test /abs"),
        "{resp}"
    );

    let recs = h.records(5).await;
    let decisions: Vec<&str> = recs
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["deny", "deny", "deny", "deny", "allow"]);
    assert_eq!(recs[1]["method"], "CONNECT");
    assert_eq!(recs[2]["reason"], "missing Host header");
    let s = h.audit.summary();
    assert_eq!((s.allowed, s.denied), (1, 4));
    h.stop().await;
}

/// A request body is forwarded and counted.
#[tokio::test]
async fn request_bodies_are_forwarded_and_counted() {
    let (h, _up) = setup_http().await;
    let resp = exchange(
        &h,
        "POST /upload HTTP/1.1\r\nHost: upstream.test\r\nContent-Length: 11\r\n\
         Connection: close\r\n\r\nhello world",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let recs = h.records(1).await;
    assert_eq!(recs[0]["method"], "POST");
    assert_eq!(recs[0]["bytes_up"], 11);
    h.stop().await;
}
