//! The HTTPS client the token sources use to reach token endpoints.
//!
//! One short-lived HTTP/1.1 connection per request: tokens are minted a few times an hour per
//! credential, so pooling buys nothing and a fresh connection never meets a half-closed one.
//! TLS is rustls with the webpki roots plus the configuration's extra CA certificates
//! (`upstream_ca`); verification cannot be turned off. Plain `http://` is refused except for
//! loopback hosts (test servers). Names are resolved by [`OwnDns`] (`--resolve`, then
//! `--dns-server`, else the system resolver of the daemon's own network namespace), never
//! through the sandbox's policy: these requests are egressd's own, not the sandbox's.
//!
//! Every request has one deadline covering connect, TLS, request and the whole response;
//! response bodies are capped at [`MAX_BODY`].

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Url;

use super::dns::OwnDns;
use super::error::MintError;

/// The largest token-endpoint response body read.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// What egressd calls itself in `User-Agent`.
const USER_AGENT: &str = concat!("egressd/", env!("CARGO_PKG_VERSION"));

/// The HTTPS client for token endpoints.
#[derive(Clone)]
pub(crate) struct TokenHttp {
    tls: TlsConnector,
    timeout: Duration,
    dns: OwnDns,
}

/// A response: status, headers, and the (capped) body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl std::fmt::Debug for TokenHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenHttp")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenHttp {
    /// A client trusting the webpki roots plus every certificate in `extra_ca_pem`.
    ///
    /// # Errors
    ///
    /// A text saying what is wrong with `extra_ca_pem` (no certificate, bad PEM or DER).
    pub(crate) fn new(extra_ca_pem: Option<&[u8]>, timeout: Duration) -> Result<Self, String> {
        let roots = crate::tls_roots::client_roots(extra_ca_pem)?;
        Ok(Self {
            tls: TlsConnector::from(crate::tls_roots::client_config(roots, &[b"http/1.1"])?),
            timeout,
            dns: OwnDns::default(),
        })
    }

    /// The same client, resolving names through `dns`.
    pub(crate) fn with_dns(mut self, dns: OwnDns) -> Self {
        self.dns = dns;
        self
    }

    /// `GET url` with `Authorization: Bearer <bearer>`, accepting JSON.
    pub(crate) async fn get_bearer(&self, url: &Url, bearer: &str) -> Result<Response, MintError> {
        let auth = HeaderValue::try_from(format!("Bearer {bearer}"))
            .map_err(|_| MintError::rejected("the request token is not a valid header value"))?;
        let request = Request::builder()
            .method(Method::GET)
            .header(header::AUTHORIZATION, auth)
            .body(Full::new(Bytes::new()));
        self.send(url, request).await
    }

    /// `GET url` without credentials, accepting JSON (OIDC discovery and JWKS).
    pub(crate) async fn get(&self, url: &Url) -> Result<Response, MintError> {
        let request = Request::builder()
            .method(Method::GET)
            .body(Full::new(Bytes::new()));
        self.send(url, request).await
    }

    /// `GET url` with `headers` (sensitive: they may hold a credential), accepting JSON unless
    /// they say otherwise (the Copilot token exchange).
    pub(crate) async fn get_with_headers(
        &self,
        url: &Url,
        headers: &[(&str, &str)],
    ) -> Result<Response, MintError> {
        let mut request = Request::builder().method(Method::GET);
        for (name, value) in headers {
            let mut value = HeaderValue::try_from(*value)
                .map_err(|_| MintError::rejected(format!("the {name} header is not valid")))?;
            value.set_sensitive(true);
            request = request.header(*name, value);
        }
        self.send(url, request.body(Full::new(Bytes::new()))).await
    }

    /// `POST url` with an `application/x-www-form-urlencoded` body of `fields`, accepting JSON.
    pub(crate) async fn post_form(
        &self,
        url: &Url,
        fields: &[(&str, &str)],
    ) -> Result<Response, MintError> {
        self.post_form_accepting(url, fields, "application/json")
            .await
    }

    /// `POST url` with a form body of `fields`, accepting `accept` (AWS STS answers XML unless
    /// asked for JSON).
    pub(crate) async fn post_form_accepting(
        &self,
        url: &Url,
        fields: &[(&str, &str)],
        accept: &'static str,
    ) -> Result<Response, MintError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let request = Request::builder()
            .method(Method::POST)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, accept)
            .body(Full::new(Bytes::from(body)));
        self.send(url, request).await
    }

    /// `POST url` with a JSON body (sensitive: it holds an assertion) and `headers` (the
    /// Anthropic token endpoint).
    pub(crate) async fn post_json(
        &self,
        url: &Url,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Result<Response, MintError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(url, request.body(Full::new(Bytes::from(body.to_string()))))
            .await
    }

    /// `POST url` with a JSON body and `Authorization: Bearer <bearer>` (Google IAM
    /// Credentials).
    pub(crate) async fn post_json_bearer(
        &self,
        url: &Url,
        bearer: &str,
        body: &serde_json::Value,
    ) -> Result<Response, MintError> {
        let mut auth = HeaderValue::try_from(format!("Bearer {bearer}"))
            .map_err(|_| MintError::malformed("the exchanged token is not a valid header value"))?;
        auth.set_sensitive(true);
        let request = Request::builder()
            .method(Method::POST)
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())));
        self.send(url, request).await
    }

    async fn send(
        &self,
        url: &Url,
        request: Result<Request<Full<Bytes>>, hyper::http::Error>,
    ) -> Result<Response, MintError> {
        let endpoint = endpoint(url);
        match tokio::time::timeout(self.timeout, self.exchange(url, request)).await {
            Ok(result) => result.map_err(|e| e.context(&endpoint)),
            Err(_) => Err(MintError::unavailable(format!(
                "{endpoint}: no answer within {}s",
                self.timeout.as_secs()
            ))),
        }
    }

    async fn exchange(
        &self,
        url: &Url,
        request: Result<Request<Full<Bytes>>, hyper::http::Error>,
    ) -> Result<Response, MintError> {
        let mut request =
            request.map_err(|e| MintError::rejected(format!("building the request: {e}")))?;
        let (host, port, ip) = target(url)?;
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        *request.uri_mut() = url[url::Position::BeforePath..]
            .parse()
            .map_err(|_| MintError::rejected("the URL's path is not a valid request target"))?;
        let headers = request.headers_mut();
        headers.insert(
            header::HOST,
            HeaderValue::try_from(authority)
                .map_err(|_| MintError::rejected("the URL's host is not a valid header"))?,
        );
        headers
            .entry(header::ACCEPT)
            .or_insert(HeaderValue::from_static("application/json"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));

        let stream = match ip {
            Some(ip) => TcpStream::connect((ip, port)).await,
            None => TcpStream::connect(&self.dns.addrs(&host, port).await?[..]).await,
        }
        .map_err(|e| MintError::unavailable(format!("connecting: {e}")))?;
        if url.scheme() == "https" {
            let name = match ip {
                Some(ip) => ServerName::IpAddress(ip.into()),
                None => ServerName::try_from(host.clone())
                    .map_err(|_| MintError::rejected("the URL's host is not a valid TLS name"))?,
            };
            let tls = self
                .tls
                .connect(name, stream)
                .await
                .map_err(|e| MintError::unavailable(format!("TLS handshake: {e}")))?;
            round_trip(tls, request).await
        } else {
            round_trip(stream, request).await
        }
    }
}

/// `scheme://host[:port]` of `url`, for messages (no path: it may carry IDs).
fn endpoint(url: &Url) -> String {
    url[..url::Position::BeforePath].to_owned()
}

/// The host to dial, its port, and its address when it is an IP literal. Refuses schemes
/// other than `https`, and `http` to anything but loopback.
fn target(url: &Url) -> Result<(String, u16, Option<IpAddr>), MintError> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
        None => return Err(MintError::rejected("the URL has no host")),
    };
    let host = url.host_str().unwrap_or_default().to_owned();
    let loopback = ip.map_or(host.eq_ignore_ascii_case("localhost"), |ip| {
        ip.is_loopback()
    });
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        other => {
            return Err(MintError::rejected(format!(
                "refusing {other}:// for a token endpoint: use https://"
            )));
        }
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| MintError::rejected("the URL has no port"))?;
    Ok((host, port, ip))
}

async fn round_trip<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<Response, MintError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| MintError::unavailable(format!("HTTP handshake: {e}")))?;
    // The connection task ends when the response is read and `sender` is dropped.
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| MintError::unavailable(format!("sending the request: {e}")))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| MintError::unavailable(format!("reading the response: {e}")))?
        .to_bytes();
    drop(sender);
    driver.abort();
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

impl Response {
    /// The `Retry-After` header in seconds, if present and numeric.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
            .map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        let ok = |u: &str| target(&Url::parse(u).unwrap()).is_ok();
        assert!(ok("https://login.microsoftonline.com/t/oauth2/v2.0/token"));
        assert!(ok("http://127.0.0.1:8080/x"));
        assert!(ok("http://[::1]:8080/x"));
        assert!(ok("http://localhost:8080/x"));
        assert!(!ok("http://login.microsoftonline.com/x"));
        assert!(!ok("http://10.0.0.1/x"));
        assert!(!ok("ftp://127.0.0.1/x"));
        let (host, port, ip) = target(&Url::parse("https://[::1]/x").unwrap()).unwrap();
        assert_eq!(
            (host.as_str(), port, ip),
            ("[::1]", 443, Some("::1".parse().unwrap()))
        );
    }

    #[test]
    fn extra_roots_must_hold_a_certificate() {
        assert!(TokenHttp::new(None, Duration::from_secs(1)).is_ok());
        let err = TokenHttp::new(Some(b"not pem"), Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn endpoints_in_messages_have_no_path() {
        let url = Url::parse("https://a.example:8443/plan/123/idtoken?api-version=2.0").unwrap();
        assert_eq!(endpoint(&url), "https://a.example:8443");
    }
}
