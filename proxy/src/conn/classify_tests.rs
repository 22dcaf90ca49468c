//! Classification tests over real rustls ClientHellos and crafted bytes.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;

use super::*;

const T: Duration = Duration::from_secs(5);
/// The head limit of these tests (the default `limits.max_header_bytes`).
const H: usize = 64 * 1024;

/// A ClientHello as a real rustls client writes it.
fn rustls_client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Appends an extension to the (single-record) ClientHello and fixes every length.
fn with_extension(hello: &[u8], typ: u16, body: &[u8]) -> Vec<u8> {
    let mut h = hello.to_vec();
    let mut ext = typ.to_be_bytes().to_vec();
    ext.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    ext.extend_from_slice(body);
    let add = ext.len();
    // Record length (bytes 3..5) and handshake length (bytes 6..9).
    let rec = usize::from(u16::from_be_bytes([h[3], h[4]])) + add;
    h[3..5].copy_from_slice(&u16::try_from(rec).unwrap().to_be_bytes());
    let hs = (usize::from(h[6]) << 16 | usize::from(h[7]) << 8 | usize::from(h[8])) + add;
    h[6..9].copy_from_slice(&u32::try_from(hs).unwrap().to_be_bytes()[1..]);
    // Walk to the extensions length: 9 + version 2 + random 32, session id, suites, compression.
    let mut i = 9 + 2 + 32;
    i += 1 + usize::from(h[i]);
    i += 2 + usize::from(u16::from_be_bytes([h[i], h[i + 1]]));
    i += 1 + usize::from(h[i]);
    let exts = usize::from(u16::from_be_bytes([h[i], h[i + 1]])) + add;
    h[i..i + 2].copy_from_slice(&u16::try_from(exts).unwrap().to_be_bytes());
    h.extend_from_slice(&ext);
    h
}

#[tokio::test]
async fn real_client_hello_gives_sni_and_alpn() {
    let hello = rustls_client_hello("Upstream.Test", &[b"h2", b"http/1.1"]);
    let (c, buf) = classify(&mut &hello[..], T, H).await.unwrap();
    let Classified::Tls(h) = c else {
        panic!("{c:?}")
    };
    assert_eq!(h.sni.as_deref(), Some("upstream.test"));
    assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(buf, hello, "every byte read is kept for replay");
    assert_eq!(has_ech_extension(&hello), Some(false));
}

#[tokio::test]
async fn client_hello_split_into_one_byte_writes() {
    let hello = rustls_client_hello("upstream.test", &[]);
    let (mut near, mut far) = tokio::io::duplex(1);
    let writer = {
        let hello = hello.clone();
        tokio::spawn(async move {
            for b in hello {
                near.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            near
        })
    };
    let (c, buf) = classify(&mut far, T, H).await.unwrap();
    let Classified::Tls(h) = c else {
        panic!("{c:?}")
    };
    assert_eq!(h.sni.as_deref(), Some("upstream.test"));
    assert_eq!(buf, hello);
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn client_hello_split_over_two_records() {
    let hello = rustls_client_hello("upstream.test", &[]);
    let body = &hello[5..];
    let (a, b) = body.split_at(40);
    let mut two = Vec::new();
    for part in [a, b] {
        two.extend_from_slice(&[0x16, 0x03, 0x01]);
        two.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
        two.extend_from_slice(part);
    }
    let (c, _) = classify(&mut &two[..], T, H).await.unwrap();
    assert!(
        matches!(c, Classified::Tls(ClientHello { sni: Some(_), .. })),
        "{c:?}"
    );
    assert_eq!(has_ech_extension(&two), Some(false));
}

#[tokio::test]
async fn truncated_client_hello_is_refused() {
    let hello = rustls_client_hello("upstream.test", &[]);
    let err = classify(&mut &hello[..hello.len() / 2], T, H)
        .await
        .unwrap_err();
    assert!(matches!(err, ClassifyError::Closed), "{err:?}");
}

#[tokio::test]
async fn garbage_after_a_tls_record_header_is_malformed() {
    let mut bytes = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    bytes.extend_from_slice(&[0xAB; 0x40]);
    let err = classify(&mut &bytes[..], T, H).await.unwrap_err();
    assert!(
        matches!(err, ClassifyError::MalformedClientHello { .. }),
        "{err:?}"
    );
    assert!(err.is_tls());
    assert_eq!(err.to_string(), "malformed ClientHello");
}

/// Flips every byte of a real ClientHello in turn: classification must always return.
#[tokio::test]
async fn mutated_client_hellos_never_panic() {
    let hello = rustls_client_hello("upstream.test", &[b"h2"]);
    for i in 0..hello.len() {
        for flip in [0xFFu8, 0x01, 0x80] {
            let mut m = hello.clone();
            m[i] ^= flip;
            let _ = classify(&mut &m[..], T, H).await;
            let _ = has_ech_extension(&m);
        }
    }
    for n in 0..hello.len() {
        let _ = has_ech_extension(&hello[..n]);
    }
}

#[tokio::test]
async fn ech_extension_is_detected_and_decided_on_the_outer_sni() {
    let hello = rustls_client_hello("public.example", &[]);
    // ECHClientHello, outer: type 0, HPKE suite, config id, enc, payload.
    let mut ech = vec![0x00, 0x00, 0x01, 0x00, 0x01, 0x2a, 0x00, 0x20];
    ech.extend_from_slice(&[0x11; 32]);
    ech.extend_from_slice(&[0x00, 0x10]);
    ech.extend_from_slice(&[0x22; 16]);
    let crafted = with_extension(&hello, 0xfe0d, &ech);
    assert_eq!(has_ech_extension(&crafted), Some(true));
    let (c, _) = classify(&mut &crafted[..], T, H).await.unwrap();
    match c {
        Classified::Tls(hello) => {
            assert!(hello.ech, "ECH must be flagged");
            assert_eq!(hello.sni.as_deref(), Some("public.example"));
        }
        other => panic!("expected TLS, got {other:?}"),
    }

    // Another unknown extension does not trip the detector.
    let other = with_extension(&hello, 0xfe0c, &[1, 2, 3]);
    assert_eq!(has_ech_extension(&other), Some(false));
    let (c, _) = classify(&mut &other[..], T, H).await.unwrap();
    assert!(matches!(c, Classified::Tls(_)), "{c:?}");
}

#[tokio::test]
async fn http_head_gives_host() {
    let req = b"GET /x?secret=1 HTTP/1.1\r\nHost: Example.COM.:8080\r\nAccept: */*\r\n\r\n";
    let (c, buf) = classify(&mut &req[..], T, H).await.unwrap();
    let want = HttpHead {
        host: Some(HostName::Name("example.com".into())),
    };
    assert_eq!(c, Classified::Http(want));
    assert_eq!(buf, req);

    let no_host = b"GET / HTTP/1.0\r\n\r\n";
    let (c, _) = classify(&mut &no_host[..], T, H).await.unwrap();
    assert_eq!(c, Classified::Http(HttpHead { host: None }));

    let two_hosts = b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n";
    let (c, _) = classify(&mut &two_hosts[..], T, H).await.unwrap();
    assert_eq!(c, Classified::Http(HttpHead { host: None }));
}

#[tokio::test]
async fn http_head_split_across_reads() {
    let (mut near, mut far) = tokio::io::duplex(8);
    let w = tokio::spawn(async move {
        for chunk in [
            &b"POST /u"[..],
            b"pload HTTP/1.1\r\nHo",
            b"st: [::1]:80\r\n",
            b"\r\n",
        ] {
            near.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        near
    });
    let (c, _) = classify(&mut far, T, H).await.unwrap();
    let want = HttpHead {
        host: Some(HostName::Ip("::1".parse().unwrap())),
    };
    assert_eq!(c, Classified::Http(want));
    drop(w.await.unwrap());
}

#[tokio::test]
async fn other_protocols_are_unknown() {
    for bytes in [
        &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
        b"\x00\x00\x00\x01garbage",
        b"hello world\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00",
    ] {
        match classify(&mut &bytes[..], T, H).await {
            Err(ClassifyError::UnknownProtocol | ClassifyError::MalformedHttp(_)) => {}
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }
    let err = classify(&mut &b""[..], T, H).await.unwrap_err();
    assert!(matches!(err, ClassifyError::Closed), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn silent_client_times_out() {
    let (_near, mut far) = tokio::io::duplex(8);
    let err = classify(&mut far, Duration::from_secs(10), H)
        .await
        .unwrap_err();
    assert!(matches!(err, ClassifyError::Timeout), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn endless_http_head_is_bounded() {
    let (mut near, mut far) = tokio::io::duplex(4096);
    let w = tokio::spawn(async move {
        near.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        loop {
            if near
                .write_all(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n")
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let err = classify(&mut far, Duration::from_secs(10), H)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClassifyError::TooManyHeaders { limit: MAX_HEADERS }),
        "{err:?}"
    );
    assert!(err.is_head_too_large());
    drop(far);
    w.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn oversize_head_is_refused_at_the_configured_limit() {
    let mut head = b"GET / HTTP/1.1\r\nHost: a.test\r\nCookie: ".to_vec();
    head.resize(5000, b'c');
    let err = classify(&mut &head[..], T, 4096).await.unwrap_err();
    assert!(
        matches!(err, ClassifyError::HttpHeadTooLarge { limit: 4096 }),
        "{err:?}"
    );
    assert!(err.is_head_too_large());
    // The same head under a larger limit is only incomplete: the client closes early.
    let err = classify(&mut &head[..], T, 8192).await.unwrap_err();
    assert!(matches!(err, ClassifyError::Closed), "{err:?}");
}

/// A client that sends a valid head one byte at a time, too slowly, is cut off at the
/// classification timeout however much it has sent (slowloris).
#[tokio::test(start_paused = true)]
async fn slowly_dripped_head_times_out() {
    let (mut near, mut far) = tokio::io::duplex(64);
    let w = tokio::spawn(async move {
        for b in b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n" {
            if near.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let started = tokio::time::Instant::now();
    let err = classify(&mut far, Duration::from_secs(5), H)
        .await
        .unwrap_err();
    assert!(matches!(err, ClassifyError::Timeout), "{err:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    drop(far);
    w.await.unwrap();
}

#[test]
fn normalize_host_cases() {
    let name = |s: &str| Some(HostName::Name(s.to_owned()));
    let ip = |s: &str| Some(HostName::Ip(s.parse().unwrap()));
    assert_eq!(normalize_host("GitHub.com"), name("github.com"));
    assert_eq!(normalize_host("github.com."), name("github.com"));
    assert_eq!(normalize_host("github.com:443"), name("github.com"));
    assert_eq!(normalize_host("192.0.2.1:80"), ip("192.0.2.1"));
    assert_eq!(normalize_host("[2001:db8::1]:8080"), ip("2001:db8::1"));
    assert_eq!(normalize_host("[2001:db8::1]"), ip("2001:db8::1"));
    for bad in [
        "",
        ":80",
        "a@b.test",
        "a b",
        "x.test:port",
        "x.test:99999",
        "[::1",
        "::1",
        "é.test",
        // Empty labels; `1..` was found by fuzzing (it became the name `1.`).
        "1..",
        "a.test..",
        "a..test",
        ".a.test",
        ".",
    ] {
        assert_eq!(normalize_host(bad), None, "{bad:?}");
    }
}
