//! Sends one `ExportLogsServiceRequest` to the collector: OTLP/gRPC (tonic over a channel
//! this module dials: h2c for `http://`, TLS with ALPN h2 for `https://`) or OTLP/HTTP
//! (`POST .../v1/logs`, `application/x-protobuf`, over one kept HTTP/1.1 connection), both
//! gzip-compressed, and sorts what comes back into the outcomes the worker acts on: taken
//! (with the records a partial success rejected), retry (with the delay the collector asked
//! for), or refused.
//!
//! # Security
//!
//! The headers (a collector's API key) are sent and never logged: errors name the status and
//! the collector's message, not the request.

use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Uri;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use prost::Message as _;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::proto::{ExportLogsServiceRequest, ExportLogsServiceResponse};

/// The longest `Retry-After` honoured, in seconds.
const MAX_RETRY_AFTER_S: u64 = 60;

/// The gRPC method of the logs service.
const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// How the collector is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    HttpProtobuf,
}

/// What one export came to.
#[derive(Debug)]
pub(crate) enum Sent {
    /// The collector took the request; it refused this many of its records.
    Taken { rejected: u64, message: String },
    /// Worth sending again (the collector is down, busy or restarting), after `after` when it
    /// said how long.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// The collector refused the request for good (bad request, unauthenticated, ...).
    Refused(String),
}

/// A stream the collector is reached over, TLS or not.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Where and how to send.
pub(crate) struct Collector {
    uri: Uri,
    protocol: OtlpProtocol,
    headers: HeaderMap,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    grpc: Option<tonic::client::Grpc<tonic::transport::Channel>>,
    http: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Collector {
    /// A collector at `uri` (`http://` or `https://`; for OTLP/HTTP, a URI without a path
    /// gets `/v1/logs`), trusting the webpki roots and `ca_pem` for `https://`.
    ///
    /// # Errors
    ///
    /// The URI's scheme is neither, it has no host, a header is malformed, or `ca_pem` holds
    /// no certificate.
    pub(crate) fn new(
        uri: &str,
        protocol: OtlpProtocol,
        headers: &[(String, String)],
        ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let mut uri: Uri = uri
            .parse()
            .map_err(|e| format!("OTLP endpoint {uri:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(format!(
                    "OTLP endpoint {uri}: the scheme must be http or https"
                ));
            }
        };
        if uri.host().is_none() {
            return Err(format!("OTLP endpoint {uri}: no host"));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(
                "OTLP endpoint: credentials in the URL are refused (they would show in \
                 messages); send them as a header (EGRESSD_OTLP_HEADERS)"
                    .to_owned(),
            );
        }
        if protocol == OtlpProtocol::HttpProtobuf && matches!(uri.path(), "" | "/") {
            let mut parts = uri.into_parts();
            parts.path_and_query = Some(PathAndQuery::from_static("/v1/logs"));
            uri = Uri::from_parts(parts).map_err(|e| format!("OTLP endpoint: {e}"))?;
        }
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("OTLP header name {name:?} is not valid"))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| format!("the value of OTLP header {name} is not valid"))?;
            map.append(name, value);
        }
        let tls = if https {
            let roots =
                crate::tls_roots::client_roots(ca_pem).map_err(|e| format!("--otlp-ca: {e}"))?;
            let alpn: &[u8] = match protocol {
                OtlpProtocol::Grpc => b"h2",
                OtlpProtocol::HttpProtobuf => b"http/1.1",
            };
            Some(crate::tls_roots::client_config(roots, &[alpn])?)
        } else {
            None
        };
        Ok(Self {
            uri,
            protocol,
            headers: map,
            tls,
            timeout,
            grpc: None,
            http: None,
        })
    }

    /// The endpoint, for messages (it holds no secret: headers do).
    pub(crate) fn endpoint(&self) -> String {
        let text = self.uri.to_string();
        match text.strip_suffix('/') {
            Some(bare) if self.uri.path() == "/" => bare.to_owned(),
            _ => text,
        }
    }

    /// Sends `request` once, within the timeout (or `within`, when shorter).
    pub(crate) async fn export(
        &mut self,
        request: &ExportLogsServiceRequest,
        within: Option<Duration>,
    ) -> Sent {
        let timeout = within.map_or(self.timeout, |w| w.min(self.timeout));
        let sent = match self.protocol {
            OtlpProtocol::Grpc => tokio::time::timeout(timeout, self.export_grpc(request)).await,
            OtlpProtocol::HttpProtobuf => {
                tokio::time::timeout(timeout, self.export_http(request)).await
            }
        };
        sent.unwrap_or_else(|_| {
            // A request cut off mid-way leaves its connection in an unknown state.
            self.grpc = None;
            self.http = None;
            Sent::Retry {
                why: format!("no answer within {} ms", timeout.as_millis()),
                after: None,
            }
        })
    }

    async fn export_grpc(&mut self, request: &ExportLogsServiceRequest) -> Sent {
        let grpc = match &mut self.grpc {
            Some(g) => g,
            None => {
                let endpoint = match tonic::transport::Endpoint::from_shared(self.uri.to_string()) {
                    Ok(e) => e.connect_timeout(self.timeout),
                    Err(e) => return Sent::Refused(format!("OTLP endpoint: {e}")),
                };
                let channel = endpoint.connect_with_connector_lazy(Dial {
                    tls: self.tls.clone(),
                });
                let grpc = tonic::client::Grpc::new(channel)
                    .send_compressed(tonic::codec::CompressionEncoding::Gzip)
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
                self.grpc.insert(grpc)
            }
        };
        if let Err(e) = grpc.ready().await {
            self.grpc = None;
            return Sent::Retry {
                why: format!("connecting: {}", crate::error::chain(&e)),
                after: None,
            };
        }
        let mut call = tonic::Request::new(request.clone());
        for (name, value) in &self.headers {
            if let Ok(key) = tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes())
                && let Ok(value) = tonic::metadata::MetadataValue::try_from(value.as_bytes())
            {
                call.metadata_mut().append(key, value);
            }
        }
        let codec =
            tonic_prost::ProstCodec::<ExportLogsServiceRequest, ExportLogsServiceResponse>::default(
            );
        match grpc
            .unary(call, PathAndQuery::from_static(GRPC_EXPORT), codec)
            .await
        {
            Ok(response) => taken(&response.into_inner()),
            Err(status) => grpc_status(&status),
        }
    }

    async fn export_http(&mut self, request: &ExportLogsServiceRequest) -> Sent {
        let body = match gzip(&request.encode_to_vec()) {
            Ok(b) => b,
            Err(e) => return Sent::Refused(format!("compressing: {e}")),
        };
        let kept = match self.http.take() {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let mut sender = match kept {
            Some(s) => s,
            None => match self.dial_http().await {
                Ok(s) => s,
                Err(why) => return Sent::Retry { why, after: None },
            },
        };
        let authority = self.uri.authority().map_or("", |a| a.as_str()).to_owned();
        let target = self
            .uri
            .path_and_query()
            .map_or("/v1/logs", |p| p.as_str())
            .to_owned();
        let mut req = hyper::Request::post(target)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
            .header(hyper::header::CONTENT_ENCODING, "gzip")
            .body(Full::new(Bytes::from(body)))
            .expect("a static request is valid");
        for (name, value) in &self.headers {
            req.headers_mut().append(name, value.clone());
        }
        let response = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                return Sent::Retry {
                    why: format!("sending: {}", crate::error::chain(&e)),
                    after: None,
                };
            }
        };
        let status = response.status();
        let after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(MAX_RETRY_AFTER_S)));
        let body = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return Sent::Retry {
                    why: format!("reading the answer: {}", crate::error::chain(&e)),
                    after: None,
                };
            }
        };
        self.http = Some(sender);
        if status.is_success() {
            return match ExportLogsServiceResponse::decode(body) {
                Ok(r) => taken(&r),
                // An empty or unreadable 2xx body is a full success (OTLP/HTTP §Success).
                Err(_) => Sent::Taken {
                    rejected: 0,
                    message: String::new(),
                },
            };
        }
        let why = format!("HTTP {status}");
        // OTLP/HTTP §Retryable Response Codes.
        if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
            Sent::Retry { why, after }
        } else {
            Sent::Refused(why)
        }
    }

    async fn dial_http(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let io = dial(&self.uri, self.tls.clone())
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake: {}", crate::error::chain(&e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// A taken request: the records a partial success rejected.
fn taken(response: &ExportLogsServiceResponse) -> Sent {
    let (rejected, message) = response
        .partial_success
        .as_ref()
        .map_or((0, String::new()), |p| {
            (
                u64::try_from(p.rejected_log_records).unwrap_or(0),
                p.error_message.clone(),
            )
        });
    Sent::Taken { rejected, message }
}

/// A gRPC error: retryable per OTLP/gRPC §Failures. `RESOURCE_EXHAUSTED` is retryable only
/// with a retry delay, which egressd does not read: it is refused, so that a request too
/// large for the collector cannot stall the export for good.
fn grpc_status(status: &tonic::Status) -> Sent {
    use tonic::Code;
    let why = format!("gRPC {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss
        | Code::Cancelled => Sent::Retry { why, after: None },
        _ => Sent::Refused(why),
    }
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// Dials `uri`'s host and port (80/443 by default), with TLS for `https://`.
async fn dial(uri: &Uri, tls: Option<Arc<rustls::ClientConfig>>) -> std::io::Result<Box<dyn Io>> {
    let host = uri
        .host()
        .ok_or_else(|| std::io::Error::other("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok(Box::new(tcp)),
        Some(config) => {
            let name = ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(Box::new(stream))
        }
    }
}

/// tonic's connector: [`dial`].
#[derive(Clone)]
struct Dial {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl tower_service::Service<Uri> for Dial {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move { Ok(TokioIo::new(dial(&uri, tls).await?)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_and_http_gets_its_path() {
        let c = |u: &str, p| Collector::new(u, p, &[], None, Duration::from_secs(1));
        assert_eq!(
            c("http://127.0.0.1:4318", OtlpProtocol::HttpProtobuf)
                .unwrap()
                .endpoint(),
            "http://127.0.0.1:4318/v1/logs"
        );
        assert_eq!(
            c("http://c:4318/custom/logs", OtlpProtocol::HttpProtobuf)
                .unwrap()
                .endpoint(),
            "http://c:4318/custom/logs"
        );
        assert!(c("ftp://c", OtlpProtocol::Grpc).is_err());
        assert!(c("c:4317", OtlpProtocol::Grpc).is_err());
        assert!(c("http://user:pw@c:4317", OtlpProtocol::Grpc).is_err());
        let bad = Collector::new(
            "http://c",
            OtlpProtocol::Grpc,
            &[("bad name".into(), "v".into())],
            None,
            Duration::from_secs(1),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn grpc_codes_sort_into_retry_and_refused() {
        let too_big = grpc_status(&tonic::Status::resource_exhausted("message too large"));
        assert!(matches!(too_big, Sent::Refused(_)));
        let retry = grpc_status(&tonic::Status::unavailable("restarting"));
        assert!(matches!(retry, Sent::Retry { .. }));
        let refused = grpc_status(&tonic::Status::unauthenticated("no key"));
        assert!(matches!(refused, Sent::Refused(ref why) if why.contains("no key")));
    }
}
