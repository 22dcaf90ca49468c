//! Request-head limits shared by the HTTP servers egressd runs (plain HTTP in `conn/http.rs`,
//! intercepted HTTP in `intercept/server.rs`).
//!
//! `limits.max_header_bytes` is enforced in two layers. egressd's own check,
//! [`head_too_large`], answers `431` with egressd's body (a text line for plain HTTP, the
//! JSON error for intercepted requests) and audits the request. hyper's read buffer is the
//! backstop: it is [`hyper_buf_size`], twice the limit, so every head up to twice the limit
//! reaches the check; a head larger than that is refused by hyper itself (`431` without a
//! body) and audited when the connection ends. Either way nothing is forwarded.

use hyper::Request;

/// hyper's smallest allowed read buffer (it panics below this).
const HYPER_MIN_BUF: usize = 8192;

/// hyper's `max_buf_size` for a head limit of `limit` bytes: twice the limit, at least
/// hyper's minimum.
pub(crate) fn hyper_buf_size(limit: u32) -> usize {
    (limit as usize).saturating_mul(2).max(HYPER_MIN_BUF)
}

/// The most headers a request head may have: in classification, and in the hyper servers
/// that parse the later requests (plain HTTP and intercepted); more is answered `431` like
/// an oversize head.
pub(crate) const MAX_HEADERS: usize = 128;

/// The most headers hyper parses, equal to the classification's limit.
pub(crate) const HYPER_MAX_HEADERS: usize = MAX_HEADERS;

/// The size `req`'s head has in HTTP/1 form (request line, headers, blank line), in bytes.
///
/// For HTTP/2 requests this is the same measure applied to the decoded header list, which
/// is what `max_header_bytes` limits there too.
pub(crate) fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len() + 1 + req.uri().to_string().len() + 1 + 8 + 2;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + headers + 2
}

/// The audit reason and client message when `req`'s head is over `limit` bytes, else `None`.
pub(crate) fn head_too_large<B>(req: &Request<B>, limit: u32) -> Option<String> {
    let size = head_size(req);
    (size > limit as usize).then(|| too_large_reason(limit))
}

/// The reason for a head over `limit` bytes (also for hyper's own refusals).
pub(crate) fn too_large_reason(limit: u32) -> String {
    format!("HTTP request head larger than {limit} bytes (limits.max_header_bytes)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_size_counts_the_wire_form() {
        let req = Request::get("/a?b=c")
            .header("host", "x.test")
            .body(())
            .unwrap();
        // "GET /a?b=c HTTP/1.1\r\n" + "host: x.test\r\n" + "\r\n"
        assert_eq!(head_size(&req), 21 + 14 + 2);
        assert_eq!(head_too_large(&req, 37), None);
        assert_eq!(
            head_too_large(&req, 36).as_deref(),
            Some("HTTP request head larger than 36 bytes (limits.max_header_bytes)")
        );
    }

    #[test]
    fn hyper_buffer_is_twice_the_limit_and_never_below_its_minimum() {
        assert_eq!(hyper_buf_size(65536), 131_072);
        assert_eq!(hyper_buf_size(1024), 8192);
        assert_eq!(hyper_buf_size(u32::MAX), 2 * u32::MAX as usize);
    }
}
