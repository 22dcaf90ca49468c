//! Stage 1: read the first bytes of a connection and say what they are.
//!
//! [`classify`] consumes bytes from the client into a buffer (which the caller replays
//! upstream or into hyper, untouched) until it holds either a complete TLS ClientHello or a
//! complete HTTP/1 request head, then returns a [`Classified`]. It does no DNS and no
//! policy lookup, and it never panics on malformed input: every odd byte sequence becomes a
//! [`ClassifyError`] and, upstream of here, a denial.
//!
//! The ClientHello is parsed by rustls's [`Acceptor`] (SNI, ALPN); ECH (extension 0xfe0d),
//! which rustls does not expose, is found by [`has_ech_extension`], a bounds-checked walk over
//! the same handshake bytes.

use std::time::Duration;

use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::ClassifyError;
use crate::host::{HostName, normalize_host};
use crate::transport::limits::MAX_HEADERS;

/// The largest ClientHello we buffer: a full 16 KiB record plus headers and room for a
/// hello split over two records (post-quantum key shares make hellos larger than 2 KiB).
pub(crate) const MAX_CLIENT_HELLO: usize = 16 * 1024 + 4 * 1024;

/// TLS extension number of the ECH extension (draft-ietf-tls-esni, RFC 9849).
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;

/// What the first bytes of a connection turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Classified {
    /// An HTTP/1 request (the first one of the connection when classifying).
    Http(HttpHead),
    /// A TLS ClientHello.
    Tls(ClientHello),
}

/// What egressd needs from a ClientHello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientHello {
    /// The SNI, as rustls validated it (a DNS name, lowercased, no trailing dot); `None` when
    /// the client sent none (for example when it dialled an IP literal).
    pub sni: Option<String>,
    /// The ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
    /// The hello carries the ECH extension. Browsers send a GREASE (fake) one by default,
    /// which cannot be told apart on the wire, so it is not refused: the decision is made
    /// on the outer SNI, which for real ECH names the provider's public name and is then
    /// only allowed if that name is allowlisted. The sandbox gets no ECH configurations
    /// (it has no DNS of its own), so a real ECH hello can only come from a hard-coded
    /// configuration.
    pub ech: bool,
}

/// What egressd needs from an HTTP/1 request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HttpHead {
    /// The host part of the `Host` header, normalised by [`normalize_host`]; `None` if the
    /// header is missing or unparseable.
    pub host: Option<HostName>,
}

/// Reads from `stream` until the buffered bytes form a ClientHello or a request head.
///
/// Returns the classification and every byte read (to be replayed). The whole read is
/// bounded by `timeout` (so a client that sends its first bytes slowly, or never finishes
/// them, fails with [`ClassifyError::Timeout`]); an HTTP request head by `max_head` bytes
/// and [`MAX_HEADERS`] headers, a ClientHello by [`MAX_CLIENT_HELLO`] bytes.
///
/// # Errors
///
/// A [`ClassifyError`] for timeouts, early close, I/O failures, oversize or malformed input,
/// ECH, and protocols other than TLS and HTTP/1.
///
/// # Cancel safety
///
/// Not cancel safe: bytes already read are lost with the future. Callers only drop it when
/// they drop the connection.
pub(crate) async fn classify<S>(
    stream: &mut S,
    timeout: Duration,
    max_head: usize,
) -> Result<(Classified, Vec<u8>), ClassifyError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(4096);
    match tokio::time::timeout(timeout, classify_inner(stream, &mut buf, max_head)).await {
        Ok(Ok(c)) => Ok((c, buf)),
        Ok(Err(e)) => Err(e),
        Err(_elapsed) => Err(ClassifyError::Timeout),
    }
}

/// [`classify`] without the timeout: reads into `buf` until it classifies.
pub(crate) async fn classify_inner<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_head: usize,
) -> Result<Classified, ClassifyError>
where
    S: AsyncRead + Unpin,
{
    read_more(stream, buf).await?;
    match buf.first() {
        Some(0x16) => classify_tls(stream, buf).await,
        Some(b) if b.is_ascii_uppercase() => classify_http(stream, buf, max_head).await,
        _ => Err(ClassifyError::UnknownProtocol),
    }
}

/// Reads once into the spare capacity of `buf`; an EOF becomes [`ClassifyError::Closed`].
async fn read_more<S>(stream: &mut S, buf: &mut Vec<u8>) -> Result<usize, ClassifyError>
where
    S: AsyncRead + Unpin,
{
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    let n = stream.read_buf(buf).await.map_err(ClassifyError::Io)?;
    if n == 0 {
        return Err(ClassifyError::Closed);
    }
    Ok(n)
}

async fn classify_tls<S>(stream: &mut S, buf: &mut Vec<u8>) -> Result<Classified, ClassifyError>
where
    S: AsyncRead + Unpin,
{
    let mut acceptor = Acceptor::default();
    let mut fed = 0;
    loop {
        // Feed the acceptor everything it has not seen yet. `read_tls` takes one read per
        // call, so loop until the new bytes are consumed.
        while fed < buf.len() {
            let mut rd = &buf[fed..];
            match acceptor.read_tls(&mut rd) {
                Ok(0) => return Err(malformed("handshake buffer full")),
                Ok(n) => fed += n,
                Err(e) => return Err(malformed(&e.to_string())),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let sni = hello.server_name().map(str::to_owned);
                let alpn = hello
                    .alpn()
                    .map(|protos| protos.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default();
                return match has_ech_extension(buf) {
                    Some(ech) => Ok(Classified::Tls(ClientHello { sni, alpn, ech })),
                    None => Err(malformed("extension list does not parse")),
                };
            }
            Ok(None) => {}
            // rustls may reject an ECH extension it cannot parse; report ECH, not garbage.
            Err(_) if has_ech_extension(buf) == Some(true) => {
                return Err(ClassifyError::EncryptedClientHello { public_name: None });
            }
            Err((e, _alert)) => return Err(malformed(&e.to_string())),
        }
        if buf.len() >= MAX_CLIENT_HELLO {
            return Err(ClassifyError::TlsTooLarge {
                limit: MAX_CLIENT_HELLO,
            });
        }
        read_more(stream, buf).await?;
    }
}

fn malformed(detail: &str) -> ClassifyError {
    ClassifyError::MalformedClientHello {
        detail: detail.to_owned(),
    }
}

async fn classify_http<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_head: usize,
) -> Result<Classified, ClassifyError>
where
    S: AsyncRead + Unpin,
{
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(_)) => {
                let host = host_header(req.headers).and_then(normalize_host);
                return Ok(Classified::Http(HttpHead { host }));
            }
            Ok(httparse::Status::Partial) => {
                // A method token that never ends is not HTTP: give up early on garbage.
                if req.method.is_none() && buf.len() > 32 {
                    return Err(ClassifyError::UnknownProtocol);
                }
            }
            Err(httparse::Error::Token) if req.method.is_none() => {
                return Err(ClassifyError::UnknownProtocol);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ClassifyError::TooManyHeaders { limit: MAX_HEADERS });
            }
            Err(e) => return Err(ClassifyError::MalformedHttp(e)),
        }
        if buf.len() >= max_head {
            return Err(ClassifyError::HttpHeadTooLarge { limit: max_head });
        }
        read_more(stream, buf).await?;
    }
}

/// The value of the single `Host` header, if there is exactly one and it is UTF-8.
fn host_header<'a>(headers: &[httparse::Header<'a>]) -> Option<&'a str> {
    let mut hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let first = hosts.next()?;
    if hosts.next().is_some() {
        return None;
    }
    std::str::from_utf8(first.value).ok()
}

/// Returns whether the ClientHello in `buf` (TLS records, starting at a record header)
/// carries the ECH extension, or `None` if the bytes do not parse as one ClientHello.
///
/// Bounds-checked throughout; reassembles a handshake message split over several records.
pub(crate) fn has_ech_extension(buf: &[u8]) -> Option<bool> {
    let hs = handshake_message(buf)?;
    let mut r = Reader(&hs);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let mut r = Reader(r.take(len)?);
    r.take(2 + 32)?; // legacy_version, random
    let n = usize::from(r.u8()?);
    r.take(n)?; // legacy_session_id
    let n = usize::from(r.u16()?);
    r.take(n)?; // cipher_suites
    let n = usize::from(r.u8()?);
    r.take(n)?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(false); // no extensions at all
    }
    let n = usize::from(r.u16()?);
    let mut exts = Reader(r.take(n)?);
    while !exts.0.is_empty() {
        let typ = exts.u16()?;
        let len = usize::from(exts.u16()?);
        exts.take(len)?;
        if typ == EXT_ENCRYPTED_CLIENT_HELLO {
            return Some(true);
        }
    }
    Some(false)
}

/// Concatenates handshake-record fragments until one whole handshake message is present.
fn handshake_message(mut buf: &[u8]) -> Option<Vec<u8>> {
    let mut hs = Vec::new();
    loop {
        let mut r = Reader(buf);
        if r.u8()? != 0x16 {
            return None;
        }
        r.take(2)?; // record version
        let len = usize::from(r.u16()?);
        hs.extend_from_slice(r.take(len)?);
        buf = r.0;
        if hs.len() >= 4 {
            let want =
                4 + (usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]));
            if hs.len() >= want {
                hs.truncate(want);
                return Some(hs);
            }
        }
    }
}

/// A cursor over untrusted bytes; every method returns `None` instead of reading past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
