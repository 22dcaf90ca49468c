//! AWS Signature Version 4: signs an intercepted request with the temporary keys of an
//! `aws-web-identity` credential ([`crate::token::AwsCredentials`]).
//!
//! Pure: no I/O, no clock (the caller passes `now`), no knowledge of rules. [`sign`] builds
//! the canonical request of AWS's SigV4 specification, the string to sign and the signing key
//! (`HMAC-SHA256` chain `AWS4<secret>` → date → region → service → `aws4_request`), then sets
//! `x-amz-date`, `x-amz-security-token` (session keys), optionally `x-amz-content-sha256`, and
//! `authorization: AWS4-HMAC-SHA256 Credential=<key id>/<date>/<region>/<service>/aws4_request,
//! SignedHeaders=..., Signature=...`, replacing any the client sent.
//!
//! # How a rule will use it
//!
//! An `[[intercept]]` rule whose credential is `aws-web-identity` will say
//! `sign = "aws-sigv4"` with `region` and `service` (`bedrock` for Bedrock runtime, `s3`, ...).
//! Per request the interception code then:
//!
//! 1. gets the token: `broker.get(name)`, and takes [`Token::aws`](crate::token::Token::aws)
//!    (never `secret`, which is empty for AWS keys);
//! 2. strips the client's `authorization`, `x-amz-security-token` and `x-amz-date`;
//! 3. computes the body's SHA-256 in hex: SigV4 covers the payload, so a signed request body
//!    must be buffered (bounded) before it is sent; only S3 accepts `UNSIGNED-PAYLOAD`
//!    (with `content_sha256 = true`), which lets a body stream;
//! 4. calls [`sign`] with the upstream URI (authority = the SNI host), the headers as they
//!    will be sent (after hop-by-hop headers are removed: signed headers must arrive
//!    unchanged), the keys, the rule's region and service, and `OffsetDateTime::now_utc()`.
//!
//! Signed headers are `host` (the `Host` header, or the URI's authority for HTTP/2, whose
//! `:authority` AWS checks instead), `content-type`, `content-md5` and every `x-amz-*` header:
//! what AWS requires, without headers a hop may rewrite.
//!
//! # Security
//!
//! The secret access key only keys the HMAC; it never appears in a header, an error or a log.
//! The session token goes in `x-amz-security-token`, marked sensitive like the signature.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use hyper::Uri;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::macros::format_description;

/// The payload hash S3 accepts for a body that is not hashed (interception always hashes
/// today; kept for streaming S3 uploads and tested).
#[cfg(test)]
pub(crate) const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The keys that sign.
#[derive(Clone, Copy)]
pub(crate) struct Keys<'a> {
    /// `AccessKeyId`.
    pub(crate) access_key_id: &'a str,
    /// `SecretAccessKey`.
    pub(crate) secret_access_key: &'a str,
    /// `SessionToken`, for temporary keys.
    pub(crate) session_token: Option<&'a str>,
}

/// Where and when the signature is valid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    /// The region, such as `us-east-1`.
    pub(crate) region: &'a str,
    /// The service's signing name, such as `bedrock` or `s3`.
    pub(crate) service: &'a str,
    /// The signing time (UTC); AWS refuses signatures more than 5 minutes off its clock.
    pub(crate) now: OffsetDateTime,
    /// Also send `x-amz-content-sha256` (S3 requires it).
    pub(crate) content_sha256: bool,
}

/// A request that cannot be signed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignError {
    /// A header to sign is not visible ASCII.
    #[error("header {0} is not visible ASCII, so it cannot be signed")]
    Header(String),
    /// The request has no `Host` header and its URI no authority.
    #[error("the request names no host to sign")]
    NoHost,
    /// A key or the session token is not a valid header value.
    #[error("the AWS keys are not valid header values")]
    Keys,
}

/// Signs a request in place (see the module docs for what is added and which headers are
/// signed). `body_sha256_hex` is the lowercase hex SHA-256 of the body ([`sha256_hex`]), or
/// `UNSIGNED-PAYLOAD` for S3.
///
/// # Errors
///
/// A signed header is not visible ASCII, there is no host, or the keys are not header values.
pub(crate) fn sign(
    method: &str,
    uri: &Uri,
    headers: &mut HeaderMap,
    body_sha256_hex: &str,
    keys: Keys<'_>,
    scope: Scope<'_>,
) -> Result<(), SignError> {
    let amz_date = scope
        .now
        .to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .expect("a UTC date formats with numeric components only");
    let date = &amz_date[..8];
    for name in [
        "authorization",
        "x-amz-date",
        "x-amz-security-token",
        "x-amz-content-sha256",
    ] {
        headers.remove(name);
    }
    headers.insert("x-amz-date", header_value(&amz_date)?);
    if let Some(token) = keys.session_token {
        let mut value = header_value(token)?;
        value.set_sensitive(true);
        headers.insert("x-amz-security-token", value);
    }
    if scope.content_sha256 {
        headers.insert("x-amz-content-sha256", header_value(body_sha256_hex)?);
    }

    let (signed_headers, canonical_headers) = canonical_headers(uri, headers)?;
    let canonical_request = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{body_sha256_hex}",
        canonical_path(uri.path(), scope.service == "s3"),
        canonical_query(uri.query().unwrap_or_default()),
    );
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{credential_scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let key = signing_key(keys.secret_access_key, date, scope.region, scope.service);
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    let mut authorization = header_value(&format!(
        "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed_headers}, \
         Signature={signature}",
        keys.access_key_id
    ))?;
    authorization.set_sensitive(true);
    headers.insert(hyper::header::AUTHORIZATION, authorization);
    Ok(())
}

/// Lowercase hex SHA-256 of `bytes` (the payload hash of [`sign`]).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

// === helpers ===

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn header_value(text: &str) -> Result<HeaderValue, SignError> {
    HeaderValue::from_str(text).map_err(|_| SignError::Keys)
}

/// Whether `name` is signed: `host`, `content-type`, `content-md5`, `x-amz-*`.
fn is_signed(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(name, "host" | "content-type" | "content-md5") || name.starts_with("x-amz-")
}

/// `SignedHeaders` and the canonical header block (each `name:value\n`, names lowercase and
/// sorted, values trimmed with inner runs of spaces collapsed, repeated headers joined by `,`).
fn canonical_headers(uri: &Uri, headers: &HeaderMap) -> Result<(String, String), SignError> {
    let mut entries: Vec<(String, String)> = Vec::new();
    if !headers.contains_key(hyper::header::HOST) {
        let authority = uri.authority().ok_or(SignError::NoHost)?;
        entries.push(("host".to_owned(), authority.as_str().to_owned()));
    }
    for name in headers.keys().filter(|n| is_signed(n)) {
        let mut values = Vec::new();
        for value in headers.get_all(name) {
            let text = value
                .to_str()
                .map_err(|_| SignError::Header(name.as_str().to_owned()))?;
            values.push(text.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        entries.push((name.as_str().to_owned(), values.join(",")));
    }
    entries.sort();
    let signed: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    let block = entries.iter().fold(String::new(), |mut s, (n, v)| {
        let _ = writeln!(s, "{n}:{v}");
        s
    });
    Ok((signed.join(";"), block))
}

/// The canonical URI: each segment percent-decoded and encoded once (S3), or normalized (no
/// `.`, `..` or empty segments) and encoded twice (every other service), as the SigV4
/// specification says.
fn canonical_path(path: &str, s3: bool) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut kept: Vec<String> = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let once = encode(&decode(segment));
        if s3 {
            kept.push(once);
            continue;
        }
        match *segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            "" if i + 1 < segments.len() => {}
            _ => kept.push(encode(once.as_bytes())),
        }
    }
    let mut out = format!("/{}", kept.join("/"));
    if !s3 && kept.last().is_some_and(|s| !s.is_empty()) && path.ends_with('/') {
        out.push('/');
    }
    out
}

/// The canonical query: every `name=value` decoded, then encoded strictly, sorted by name
/// then value; a parameter without `=` has an empty value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (encode(&decode(name)), encode(&decode(value)))
        })
        .collect();
    pairs.sort();
    let pairs: Vec<String> = pairs.into_iter().map(|(n, v)| format!("{n}={v}")).collect();
    pairs.join("&")
}

/// Percent-encodes every byte but the RFC 3986 unreserved characters, in uppercase hex.
fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes `%XX` escapes (a malformed escape stays as written; `+` stays `+`).
fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(byte) = escaped {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    /// The example keys of AWS's SigV4 documentation and test suite.
    const KEYS: Keys<'static> = Keys {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token: None,
    };
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn scope(service: &'static str) -> Scope<'static> {
        Scope {
            region: "us-east-1",
            service,
            now: datetime!(2015-08-30 12:36:00 UTC),
            content_sha256: false,
        }
    }

    fn authorization(headers: &HeaderMap) -> &str {
        headers["authorization"].to_str().unwrap()
    }

    #[test]
    fn signing_key_of_the_documented_example() {
        // SigV4 documentation: the derived key for 20150830/us-east-1/iam.
        let key = signing_key(KEYS.secret_access_key, "20150830", "us-east-1", "iam");
        assert_eq!(
            hex(&key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        assert_eq!(sha256_hex(b""), EMPTY_SHA256);
    }

    #[test]
    fn documented_iam_list_users_get() {
        // SigV4 documentation: GET https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08
        // with Content-Type and X-Amz-Date, at 20150830T123600Z in us-east-1.
        let uri: Uri = "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08"
            .parse()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "iam.amazonaws.com".parse().unwrap());
        headers.insert(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        sign("GET", &uri, &mut headers, EMPTY_SHA256, KEYS, scope("iam")).unwrap();
        assert_eq!(headers["x-amz-date"], "20150830T123600Z");
        assert_eq!(
            authorization(&headers),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        assert!(headers["authorization"].is_sensitive());
        assert!(!headers.contains_key("x-amz-security-token"));
    }

    #[test]
    fn test_suite_get_vanilla() {
        // SigV4 test suite, get-vanilla: GET / with Host example.amazonaws.com, service "service".
        let uri: Uri = "/".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.amazonaws.com".parse().unwrap());
        // A client's own signature is replaced, not kept.
        headers.insert("authorization", "AWS4-HMAC-SHA256 forged".parse().unwrap());
        sign(
            "GET",
            &uri,
            &mut headers,
            EMPTY_SHA256,
            KEYS,
            scope("service"),
        )
        .unwrap();
        assert_eq!(
            authorization(&headers),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert_eq!(headers.get_all("authorization").iter().count(), 1);
    }

    #[test]
    fn host_comes_from_the_uri_for_http2_and_session_keys_add_the_token() {
        let uri: Uri = "https://example.amazonaws.com/".parse().unwrap();
        let mut with_host = HeaderMap::new();
        with_host.insert("host", "example.amazonaws.com".parse().unwrap());
        let mut without = HeaderMap::new();
        sign(
            "GET",
            &uri,
            &mut with_host,
            EMPTY_SHA256,
            KEYS,
            scope("service"),
        )
        .unwrap();
        sign(
            "GET",
            &uri,
            &mut without,
            EMPTY_SHA256,
            KEYS,
            scope("service"),
        )
        .unwrap();
        assert_eq!(with_host["authorization"], without["authorization"]);
        assert!(
            !without.contains_key("host"),
            "HTTP/2 carries it as :authority"
        );

        let session = Keys {
            session_token: Some("IQoJb3JpZ2luX2VjEXAMPLE"),
            ..KEYS
        };
        let s3 = Scope {
            content_sha256: true,
            ..scope("s3")
        };
        let mut headers = HeaderMap::new();
        sign("PUT", &uri, &mut headers, UNSIGNED_PAYLOAD, session, s3).unwrap();
        assert_eq!(headers["x-amz-security-token"], "IQoJb3JpZ2luX2VjEXAMPLE");
        assert!(headers["x-amz-security-token"].is_sensitive());
        assert_eq!(headers["x-amz-content-sha256"], UNSIGNED_PAYLOAD);
        let auth = authorization(&headers);
        assert!(
            auth.contains(
                "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"
            ),
            "{auth}"
        );
        assert!(!auth.contains(KEYS.secret_access_key));
        assert!(auth.contains("/20150830/us-east-1/s3/aws4_request"));
    }

    #[test]
    fn canonical_uri_and_query_follow_the_specification() {
        // Every service but S3: normalized, each segment encoded twice.
        assert_eq!(canonical_path("", false), "/");
        assert_eq!(canonical_path("/", false), "/");
        assert_eq!(canonical_path("/a/./b/../c", false), "/a/c");
        assert_eq!(canonical_path("//a//b/", false), "/a/b/");
        assert_eq!(
            canonical_path("/model/anthropic.claude-3:0/invoke", false),
            "/model/anthropic.claude-3%253A0/invoke"
        );
        assert_eq!(canonical_path("/a%20b", false), "/a%2520b");
        // S3: as sent, encoded once, not normalized.
        assert_eq!(canonical_path("/bucket/a b/./k", true), "/bucket/a%20b/./k");
        assert_eq!(canonical_path("/bucket/a%20b", true), "/bucket/a%20b");
        // Query: sorted by name then value, strictly encoded, empty values kept.
        assert_eq!(
            canonical_query("Version=2010-05-08&Action=ListUsers"),
            "Action=ListUsers&Version=2010-05-08"
        );
        assert_eq!(canonical_query("b=2&a=2&a=1&flag"), "a=1&a=2&b=2&flag=");
        assert_eq!(canonical_query("k=a%20b+c/d~"), "k=a%20b%2Bc%2Fd~");
        assert_eq!(canonical_query(""), "");
    }

    #[test]
    fn header_values_are_trimmed_and_repeats_joined() {
        let uri: Uri = "https://h.example/".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "h.example".parse().unwrap());
        headers.append("x-amz-meta-a", "  one   two ".parse().unwrap());
        headers.append("x-amz-meta-a", "three".parse().unwrap());
        headers.insert("user-agent", "not signed".parse().unwrap());
        let (signed, block) = canonical_headers(&uri, &headers).unwrap();
        assert_eq!(signed, "host;x-amz-meta-a");
        assert_eq!(block, "host:h.example\nx-amz-meta-a:one two,three\n");
    }
}
