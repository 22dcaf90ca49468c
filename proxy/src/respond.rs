//! The one place where a refusal or failure becomes something the client sees.
//!
//! Plain-HTTP clients get a status and a one-line `text/plain` body; TLS and unclassified
//! clients get a TCP reset. Handlers call these functions and never build responses or
//! write response bytes themselves, so every client-visible message has one format:
//!
//! ```text
//! egressd: denied <host>:<port>: <reason> (rule: <rule or none>)
//! ```
//!
//! # Security
//!
//! Bodies name the destination the client itself asked for, the reason and the rule; never
//! resolved addresses, header values or anything about the host running egressd.

use std::fmt;
use std::io;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::ErrorKind;
use crate::host::HostName;

/// A refusal to report: who was refused, why, and by which rule.
#[derive(Clone, Debug)]
pub(crate) struct Denial {
    /// The host the client asked for.
    pub host: Option<HostName>,
    /// The destination port.
    pub port: u16,
    /// Why (policy reason or stage error).
    pub reason: String,
    /// The deciding rule (`Entry`'s `Display`), if any.
    pub rule: Option<String>,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("egressd: denied ")?;
        match &self.host {
            Some(HostName::Ip(std::net::IpAddr::V6(ip))) => write!(f, "[{ip}]")?,
            Some(h) => write!(f, "{h}")?,
            None => f.write_str("(no host)")?,
        }
        write!(
            f,
            ":{}: {} (rule: {})",
            self.port,
            self.reason,
            self.rule.as_deref().unwrap_or("none")
        )
    }
}

/// `403 Forbidden` for a request egressd refuses.
pub(crate) fn forbidden(denial: &Denial) -> Response<Full<Bytes>> {
    text(StatusCode::FORBIDDEN, denial.to_string())
}

/// `400 Bad Request` for a request egressd cannot decide on (no `Host`, several of them).
pub(crate) fn bad_request(reason: &str) -> Response<Full<Bytes>> {
    text(
        StatusCode::BAD_REQUEST,
        format!("egressd: bad request: {reason}"),
    )
}

/// The response for an allowed request whose upstream could not be used, by error class:
/// a refused address is a denial (`403`), a timeout is `504`, anything else `502`.
pub(crate) fn upstream_failed(kind: ErrorKind, denial: &Denial) -> Response<Full<Bytes>> {
    let status = match kind {
        k if k.is_denial() => return forbidden(denial),
        ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    let host = denial
        .host
        .as_ref()
        .map_or_else(|| "(no host)".to_owned(), ToString::to_string);
    text(
        status,
        format!(
            "egressd: upstream {host}:{} failed: {}",
            denial.port, denial.reason
        ),
    )
}

/// `431 Request Header Fields Too Large` for a plain-HTTP request whose head is over
/// `limits.max_header_bytes`; the connection is closed after it.
pub(crate) fn header_too_large(denial: &Denial) -> Response<Full<Bytes>> {
    let mut resp = text(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        denial.to_string(),
    );
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// `413 Content Too Large` for a plain-HTTP request whose body is over
/// `limits.max_body_bytes`; the connection is closed after it (the rest of the body was not
/// read).
pub(crate) fn body_too_large(denial: &Denial) -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::PAYLOAD_TOO_LARGE, denial.to_string());
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Writes `resp` (a response built here, with a complete body) on a connection no HTTP
/// server is serving, then shuts the connection down: for the first request of a
/// connection whose head was refused before hyper could parse it (too large).
///
/// # Errors
///
/// Writing to the client failed.
pub(crate) async fn write_raw<S>(stream: &mut S, resp: Response<Full<Bytes>>) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let (parts, body) = resp.into_parts();
    let Ok(body) = body.collect().await;
    let body = body.to_bytes();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    stream.write_all(&head).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

/// Closes a TLS or unclassified connection egressd refuses, with a reset (`SO_LINGER` 0) so
/// the client fails fast instead of waiting for a handshake that will never come.
pub(crate) fn reset(stream: TcpStream) {
    // If the option cannot be set the socket is still closed, just with a FIN.
    let _ = stream.set_zero_linger();
    drop(stream);
}

fn text(status: StatusCode, mut line: String) -> Response<Full<Bytes>> {
    line.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(line)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn header_too_large_is_written_as_a_complete_response() {
        let d = Denial {
            host: None,
            port: 80,
            reason: "request head larger than 1024 bytes".into(),
            rule: None,
        };
        let mut out = Vec::new();
        write_raw(&mut out, header_too_large(&d)).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let body =
            "egressd: denied (no host):80: request head larger than 1024 bytes (rule: none)\n";
        assert!(
            text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{text}"
        );
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(
            text.ends_with(&format!("content-length: {}\r\n\r\n{body}", body.len())),
            "{text}"
        );
    }

    #[tokio::test]
    async fn forbidden_has_the_one_line_body() {
        let d = Denial {
            host: Some(HostName::Name("evil.test".into())),
            port: 80,
            reason: "not in the allowlist".into(),
            rule: None,
        };
        let resp = forbidden(&d);
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(
            resp.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            "egressd: denied evil.test:80: not in the allowlist (rule: none)\n"
        );
        let v6 = Denial {
            host: Some(HostName::Ip("::2".parse().unwrap())),
            ..d
        };
        assert!(v6.to_string().starts_with("egressd: denied [::2]:80: "));
    }

    #[test]
    fn upstream_failures_map_to_status_by_kind() {
        let d = Denial {
            host: None,
            port: 80,
            reason: "x".into(),
            rule: None,
        };
        assert_eq!(upstream_failed(ErrorKind::RefusedAddress, &d).status(), 403);
        assert_eq!(
            upstream_failed(ErrorKind::UpstreamTimeout, &d).status(),
            504
        );
        assert_eq!(
            upstream_failed(ErrorKind::UpstreamUnreachable, &d).status(),
            502
        );
    }
}

/// The JSON body intercepted HTTP clients get when egressd refuses or fails a request:
/// `{"error": ..., "host": ..., "rule": ..., "credential": ..., "retryable": ...}`.
#[derive(Debug, serde::Serialize)]
pub(crate) struct JsonError<'a> {
    /// What went wrong, safe to show (never a token).
    pub error: &'a str,
    /// The host the connection is for.
    pub host: &'a str,
    /// The interception rule, if one applied.
    pub rule: Option<&'a str>,
    /// The credential concerned, if any.
    pub credential: Option<&'a str>,
    /// Whether trying again later may succeed.
    pub retryable: bool,
}

/// `status` with a JSON [`JsonError`] body.
pub(crate) fn json_error(status: StatusCode, body: &JsonError<'_>) -> Response<Full<Bytes>> {
    let json =
        serde_json::to_vec(body).unwrap_or_else(|_| b"{\"error\":\"egressd error\"}".to_vec());
    json_bytes(status, Bytes::from(json))
}

/// The same refusals and failures as [`json_error`], rendered as AWF's api-proxy renders
/// them for its clients (`reference/awf.md` §5.4):
/// `{"error":{"message","type","provider","port","retryable"}}`.
pub(crate) fn awf_error(status: StatusCode, awf: &AwfError<'_>) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({"error": {
            "message": awf.message,
            "type": awf.kind,
            "provider": awf.provider,
            "port": awf.port,
            "retryable": awf.retryable,
        }}),
    )
}

/// What an [`awf_error`] body says.
#[derive(Debug)]
pub(crate) struct AwfError<'a> {
    /// What went wrong, safe to show (never a key).
    pub message: &'a str,
    /// AWF's error type (`upstream_error`, `request_too_large`, ...).
    pub kind: &'a str,
    /// The provider the request was for (`openai`, `anthropic`, ...).
    pub provider: &'a str,
    /// The api-proxy port the client used.
    pub port: u16,
    /// Whether trying again later may succeed.
    pub retryable: bool,
}

/// `status` with `value` as its JSON body.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    json_bytes(status, Bytes::from(value.to_string()))
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A response built here, with the body type of the HTTP servers (hyper's, boxed).
pub(crate) fn boxed(resp: Response<Full<Bytes>>) -> Response<crate::body::ResBody> {
    resp.map(|body| body.map_err(|never| match never {}).boxed_unsync())
}
