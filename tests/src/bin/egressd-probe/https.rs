//! The HTTPS actions: async (tokio, hyper, rustls), each on its own current-thread runtime.
//!
//! ```text
//! sse https://HOST[:PORT]/PATH                   GET a server-sent event stream; each
//!                                                event's arrival time
//! websocket wss://HOST[:PORT]/PATH MESSAGE       WebSocket handshake, send MESSAGE, read the
//!                                                echo
//! h2-authorities https://HOST[:PORT]/PATH OTHER_HOST
//!                                                one TLS+h2 connection, GET the URL, then
//!                                                the same path with `:authority` OTHER_HOST
//! h2-idle https://HOST[:PORT]/PATH WAIT_S        one TLS+h2 connection, GET the URL, then
//!                                                wait silently for the server to close it
//! ```
//!
//! They trust exactly the CA bundle in `SSL_CERT_FILE`, send the agent's own placeholder
//! credentials, and give up after 20 s; their errors carry `stage` and `message`, no `errno`.

use std::{future::Future, sync::Arc, time::Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

use crate::json::{Json, escape};

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The agent's own credentials: egressd must strip them.
const AGENT_HEADERS: [(&str, &str); 2] = [
    ("authorization", "Bearer agent-placeholder"),
    ("api-key", "agent-placeholder"),
];

/// A failed step: `(stage, message)`.
type Failure = (&'static str, String);

fn at<E: std::fmt::Display>(stage: &'static str) -> impl FnOnce(E) -> Failure {
    move |e| (stage, e.to_string())
}

/// Runs `work` on a fresh current-thread runtime, with a deadline.
fn run(work: impl Future<Output = Result<(), Failure>>) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(at("runtime"))?;
    rt.block_on(async {
        tokio::time::timeout(TIMEOUT, work)
            .await
            .unwrap_or_else(|_| Err(("timeout", format!("no result within {TIMEOUT:?}"))))
    })
}

/// The line: what `work` recorded, then `result`, or the failure.
fn finish(mut out: Json, result: Result<(), Failure>) -> Json {
    match result {
        Ok(()) => {
            out.field("result", "ok");
            out
        }
        Err((stage, message)) => out.failed(stage, &message),
    }
}

/// `scheme://host[:port]/path?query`, split.
struct Target {
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(url: &str, scheme: &str) -> Result<Self, Failure> {
        let parsed = url::Url::parse(url).map_err(at("parse"))?;
        if parsed.scheme() != scheme {
            return Err(("parse", format!("{url}: the scheme must be {scheme}")));
        }
        let host = parsed
            .host_str()
            .ok_or(("parse", format!("{url}: no host")))?
            .to_owned();
        let mut path = parsed.path().to_owned();
        if let Some(query) = parsed.query() {
            path = format!("{path}?{query}");
        }
        Ok(Self {
            host,
            port: parsed.port_or_known_default().unwrap_or(443),
            path,
        })
    }

    /// `host`, or `host:port` off 443.
    fn authority(&self, host: &str) -> String {
        if self.port == 443 {
            host.to_owned()
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// TCP, then TLS trusting only `SSL_CERT_FILE`, offering `alpn`; returns the stream and
/// the protocol the server chose.
async fn tls_connect(
    target: &Target,
    alpn: &[&[u8]],
) -> Result<(TlsStream<TcpStream>, String), Failure> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
    let bundle = std::env::var_os("SSL_CERT_FILE")
        .ok_or(("trust", "SSL_CERT_FILE is not set".to_owned()))?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&bundle)
        .map_err(at("trust"))?
        .filter_map(Result::ok);
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(("trust", "no certificate in SSL_CERT_FILE".to_owned()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(at("tls"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(at("connect"))?;
    let name = ServerName::try_from(target.host.clone()).map_err(at("parse"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(at("tls"))?;
    let chosen = tls
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    Ok((tls, chosen))
}

fn get(uri: String) -> Request<Empty<Bytes>> {
    let mut builder = Request::get(uri).header("accept", "text/event-stream, */*");
    for (name, value) in AGENT_HEADERS {
        builder = builder.header(name, value);
    }
    builder
        .body(Empty::new())
        .expect("a valid request from valid parts")
}

/// `sse URL`: `status`, `headers_ms` (response head, from sending the request), `events`
/// (each event's `data:` value) and `arrivals_ms` (when the bytes completing each event
/// were read), `total_ms`.
pub fn sse(url: &str) -> Json {
    let mut out = Json::new("sse", url);
    let result = run(sse_work(&mut out, url));
    finish(out, result)
}

async fn sse_work(out: &mut Json, url: &str) -> Result<(), Failure> {
    let target = Target::parse(url, "https")?;
    let (tls, _) = tls_connect(&target, &[b"http/1.1"]).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(at("http"))?;
    tokio::spawn(conn);
    let mut req = get(target.path.clone());
    req.headers_mut().insert(
        hyper::header::HOST,
        target
            .authority(&target.host)
            .parse()
            .map_err(at("parse"))?,
    );
    let start = Instant::now();
    let resp = sender.send_request(req).await.map_err(at("request"))?;
    out.raw("status", &resp.status().as_u16().to_string());
    out.raw("headers_ms", &start.elapsed().as_millis().to_string());
    let mut body = resp.into_body();
    let (mut buf, mut events, mut arrivals) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(at("body"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = start.elapsed().as_millis();
        buf.extend_from_slice(&data);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .collect();
            events.push(format!("\"{}\"", escape(&data.join("\n"))));
            arrivals.push(now.to_string());
        }
    }
    out.raw("events", &format!("[{}]", events.join(",")));
    out.raw("arrivals_ms", &format!("[{}]", arrivals.join(",")));
    out.raw("total_ms", &start.elapsed().as_millis().to_string());
    Ok(())
}

/// `websocket URL MESSAGE`: `status` of the handshake, `echoed_in_101` (a test
/// upstream's `x-echo-credentials`), `echo` (the first text message
/// back).
pub fn websocket(url: &str, message: &str) -> Json {
    let mut out = Json::new("websocket", url);
    let result = run(websocket_work(&mut out, url, message));
    finish(out, result)
}

async fn websocket_work(out: &mut Json, url: &str, message: &str) -> Result<(), Failure> {
    let target = Target::parse(url, "wss")?;
    let (tls, _) = tls_connect(&target, &[b"http/1.1"]).await?;
    let mut req = url.into_client_request().map_err(at("parse"))?;
    for (name, value) in AGENT_HEADERS {
        req.headers_mut()
            .insert(name, value.parse().map_err(at("parse"))?);
    }
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls)
        .await
        .map_err(at("handshake"))?;
    out.raw("status", &resp.status().as_u16().to_string());
    if let Some(echoed) = resp.headers().get("x-echo-credentials") {
        out.field("echoed_in_101", &String::from_utf8_lossy(echoed.as_bytes()));
    }
    ws.send(Message::text(message)).await.map_err(at("send"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                out.field("echo", text.as_str());
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => {
                return Err(("receive", format!("not a text message: {other:?}")));
            }
            Some(Err(e)) => return Err(("receive", e.to_string())),
            None => return Err(("receive", "closed before the echo".to_owned())),
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// `h2-authorities URL OTHER_HOST`: `alpn`, then `statuses` of the two requests sent on
/// one h2 connection (`:authority` the URL's host, then OTHER_HOST).
pub fn h2_authorities(url: &str, other_host: &str) -> Json {
    let mut out = Json::new("h2-authorities", url);
    let result = run(h2_authorities_work(&mut out, url, other_host));
    finish(out, result)
}

async fn h2_authorities_work(out: &mut Json, url: &str, other_host: &str) -> Result<(), Failure> {
    let target = Target::parse(url, "https")?;
    out.field("other", other_host);
    let (tls, alpn) = tls_connect(&target, &[b"h2"]).await?;
    out.field("alpn", &alpn);
    if alpn != "h2" {
        return Err(("alpn", "the server did not choose h2".to_owned()));
    }
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(at("http"))?;
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    for host in [target.host.as_str(), other_host] {
        let uri = format!("https://{}{}", target.authority(host), target.path);
        sender.ready().await.map_err(at("request"))?;
        let resp = sender.send_request(get(uri)).await.map_err(at("request"))?;
        statuses.push(resp.status().as_u16().to_string());
        resp.into_body().collect().await.map_err(at("body"))?;
    }
    out.raw("statuses", &format!("[{}]", statuses.join(",")));
    Ok(())
}

/// `h2-idle URL WAIT_S`: one h2 connection, GET the URL, then send nothing and wait up to
/// WAIT_S for the server to end the connection: `status`, then `ended`: `closed` (with
/// `after_ms` from the end of the response) or `open`.
pub fn h2_idle(url: &str, wait_s: &str) -> Json {
    let mut out = Json::new("h2-idle", url);
    let result = run(h2_idle_work(&mut out, url, wait_s));
    finish(out, result)
}

async fn h2_idle_work(out: &mut Json, url: &str, wait_s: &str) -> Result<(), Failure> {
    let wait = wait_s
        .parse::<u64>()
        .map_err(|e| ("parse", format!("WAIT_S: {e}")))?;
    let target = Target::parse(url, "https")?;
    let (tls, alpn) = tls_connect(&target, &[b"h2"]).await?;
    if alpn != "h2" {
        return Err(("alpn", "the server did not choose h2".to_owned()));
    }
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(at("http"))?;
    let mut conn = tokio::spawn(conn);
    let uri = format!("https://{}{}", target.authority(&target.host), target.path);
    sender.ready().await.map_err(at("request"))?;
    let resp = sender.send_request(get(uri)).await.map_err(at("request"))?;
    out.raw("status", &resp.status().as_u16().to_string());
    resp.into_body().collect().await.map_err(at("body"))?;
    let done = std::time::Instant::now();
    match tokio::time::timeout(std::time::Duration::from_secs(wait), &mut conn).await {
        Ok(_) => {
            out.field("ended", "closed");
            out.raw("after_ms", &done.elapsed().as_millis().to_string());
        }
        Err(_) => out.field("ended", "open"),
    }
    Ok(())
}
