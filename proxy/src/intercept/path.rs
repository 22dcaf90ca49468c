//! Request paths as servers read them. Before a rule's `path_prefix` is matched, a path is
//! normalised: unreserved characters percent-decoded, `.` and `..` segments resolved, `//`
//! collapsed; the upstream is sent that same normalised path, so the prefix egressd matched is
//! the path the server serves.
//!
//! Some escapes mean different things to different servers: an encoded `/` or `\` (`%2F`,
//! `%5C`), a raw `\`, a double-encoded character (`%252E`), a `;parameter`. [`normalize`]
//! keeps them as they are (upper-cased), which is what a strict server reads; [`readings`]
//! are the paths other servers and gateways would read (escapes decoded once or twice, `\` as
//! `/`, parameters dropped). When any reading would get another credential, the request is
//! refused: a token is never injected on a guess of how the server reads
//! `/openai/..%2fadmin`. When they all agree (a branch name `heads%2Ffeature` on a host whose
//! rule has no prefix), the request goes ahead.

use std::borrow::Cow;

/// A `%` not followed by two hex digits: no server reads it the same way as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the path has a '%' that is not followed by two hex digits")]
pub(crate) struct BadEscape;

/// `path` as a strict server reads it (see the module doc): borrowed when already normal.
///
/// # Errors
///
/// [`BadEscape`] for a malformed escape.
pub(crate) fn normalize(path: &str) -> Result<Cow<'_, str>, BadEscape> {
    if path == "*" || path.is_empty() {
        return Ok(Cow::Borrowed(path)); // `OPTIONS *`, or an authority-form target
    }
    let decoded = decode_unreserved(path)?;
    let resolved = resolve(&decoded);
    if resolved == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(resolved))
    }
}

/// Whether `path` holds something servers read differently: `%2F`, `%5C`, `%25`, `%3B` (any
/// case), a raw `\` or a `;` (a matrix parameter, which Java servers drop). Only then can one
/// of the [`readings`] differ from [`normalize`]'s.
pub(crate) fn is_ambiguous(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| match b {
        b'\\' | b';' => true,
        b'%' => matches!(hex_byte(bytes, i + 1), Some(b'/' | b'\\' | b'%' | b';')),
        _ => false,
    })
}

/// `path` as other servers and gateways may read it: every escape decoded once or twice
/// (nginx decodes once and reads a decoded `%2F` as `/`; a gateway in front may decode
/// again), `\` read as `/` or not, `;parameters` dropped from segments or not; dot segments
/// resolved after each. A credential may go ahead only when every reading gets the same rule
/// as [`normalize`]'s.
pub(crate) fn readings(path: &str) -> Vec<String> {
    let once = decode_all(path.as_bytes());
    let twice = decode_all(&once);
    let mut out: Vec<String> = Vec::with_capacity(8);
    for decoded in [once, twice] {
        let text = String::from_utf8_lossy(&decoded).into_owned();
        for backslash in [false, true] {
            let text = if backslash {
                text.replace('\\', "/")
            } else {
                text.clone()
            };
            for params in [false, true] {
                let reading = resolve(&if params {
                    without_params(&text)
                } else {
                    text.clone()
                });
                if !out.contains(&reading) {
                    out.push(reading);
                }
            }
        }
    }
    out
}

/// `path` with each segment's `;parameters` dropped (`/a;x=1/b` is `/a/b`).
fn without_params(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

/// `uri` with its path replaced by `path` (the query kept).
pub(crate) fn with_path(uri: &hyper::Uri, path: &str) -> Result<hyper::Uri, String> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|e| format!("bad request target after normalising the path: {e}"))?,
    );
    hyper::Uri::from_parts(parts).map_err(|e| format!("bad request target: {e}"))
}

/// Percent-decodes unreserved characters (RFC 3986 §2.3) and upper-cases every other escape.
fn decode_unreserved(path: &str) -> Result<Cow<'_, str>, BadEscape> {
    let bytes = path.as_bytes();
    if !bytes.contains(&b'%') {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let byte = hex_byte(rest.as_bytes(), at + 1).ok_or(BadEscape)?;
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// Every well-formed escape decoded once; malformed ones kept as they are.
fn decode_all(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex_byte(bytes, i + 1)) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The byte `%XY` encodes, with `XY` at `bytes[at..at + 2]`.
fn hex_byte(bytes: &[u8], at: usize) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16);
    let hi = digit(*bytes.get(at)?)?;
    let lo = digit(*bytes.get(at + 1)?)?;
    u8::try_from(hi * 16 + lo).ok()
}

/// Resolves `.` and `..` segments (RFC 3986 §5.2.4; `..` never climbs above the root) and
/// collapses empty segments (`//`); a trailing `/` (or a final `.`/`..`) is kept as a `/`.
fn resolve(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in path.split('/') {
        match segment {
            "" => {}
            "." => trailing = true,
            ".." => {
                segments.pop();
                trailing = true;
            }
            s => {
                segments.push(s);
                trailing = false;
            }
        }
    }
    trailing |= path.ends_with('/');
    let mut out = String::with_capacity(path.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(path: &str) -> Result<String, BadEscape> {
        normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn tricks_that_leave_a_prefix_resolve_outside_it() {
        for trick in [
            "/openai/../admin",
            "/openai/%2e%2e/admin",
            "/openai/%2E%2E/admin",
            "/openai/./../admin",
            "/openai/.%2e/admin",
            "/openai/deployments/../../admin",
            "//admin",
            "/./admin",
        ] {
            assert_eq!(n(trick).as_deref(), Ok("/admin"), "{trick}");
            assert!(readings(trick).iter().all(|r| r == "/admin"), "{trick}");
        }
    }

    #[test]
    fn encoded_separators_and_double_encoding_have_readings_outside_the_prefix() {
        for (path, strict) in [
            ("/openai/%2E%2E%2Fadmin", "/openai/..%2Fadmin"),
            ("/openai/..%2fadmin", "/openai/..%2Fadmin"),
            ("/openai/..%5cadmin", "/openai/..%5Cadmin"),
            ("/openai/..\\admin", "/openai/..\\admin"),
            ("/openai/%252e%252e/admin", "/openai/%252e%252e/admin"),
            // nginx decodes once: %25 stays a literal '%', %2F becomes '/'.
            (
                "/openai/a%252Fb%2F..%2F..%2Fadmin",
                "/openai/a%252Fb%2F..%2F..%2Fadmin",
            ),
            // Java servers drop `;parameters`.
            ("/openai/..;/admin", "/openai/..;/admin"),
        ] {
            assert!(is_ambiguous(path), "{path}");
            assert_eq!(n(path).as_deref(), Ok(strict), "{path}");
            assert!(
                readings(path).iter().any(|r| r == "/admin"),
                "{path}: {:?}",
                readings(path)
            );
        }
        for bad in ["/openai/%2", "/openai/%zz", "/%"] {
            assert_eq!(n(bad), Err(BadEscape), "{bad}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed_and_other_escapes_kept_upper_cased() {
        for path in [
            "/",
            "/openai/deployments/gpt-4o/chat/completions",
            "/v1/messages",
            "/a/b/",
            "*",
        ] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
            assert!(!is_ambiguous(path), "{path}");
        }
        assert_eq!(n("/files/a%20b%3a").as_deref(), Ok("/files/a%20b%3A"));
        assert_eq!(n("/%7euser/%41").as_deref(), Ok("/~user/A"));
        assert_eq!(n("/caf\u{e9}/%C3%A9").as_deref(), Ok("/caf\u{e9}/%C3%A9"));
        assert_eq!(n("/a/.").as_deref(), Ok("/a/"));
        assert_eq!(n("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(n("/..").as_deref(), Ok("/"));
        assert_eq!(n("/a//b").as_deref(), Ok("/a/b"));
    }
}
