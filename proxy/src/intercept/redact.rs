//! Credential reflection (bypass catalogue §12): an upstream that echoes the request (an
//! echo endpoint, an error message quoting the `Authorization` header, a body stored and
//! served back) would hand the sandbox the real token egressd injected. Responses to
//! injected requests are therefore scrubbed of that token, in header values and in the body,
//! before the sandbox sees them.
//!
//! The body is scrubbed as it streams: each chunk is searched together with the tail of the
//! previous one, and the last `len(secret) - 1` bytes are held back until the next chunk (or
//! the end) shows they are not the start of the secret. Only the exact token is replaced;
//! the replacement says what happened.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderValue};

/// What replaces the token.
pub(crate) const MARKER: &[u8] = b"[token redacted by egressd]";

/// Replaces every occurrence of `secret` in `headers`' values; returns how many were.
pub(crate) fn headers(headers: &mut HeaderMap, secret: &[u8]) -> usize {
    if secret.is_empty() {
        return 0;
    }
    let mut count = 0;
    let finder = memchr::memmem::Finder::new(secret);
    for value in headers.values_mut() {
        let bytes = value.as_bytes();
        if finder.find(bytes).is_some() {
            let (scrubbed, n) = replace_all(bytes, &finder);
            if let Ok(v) = HeaderValue::from_bytes(&scrubbed) {
                *value = v;
                count += n;
            }
        }
    }
    count
}

/// `bytes` with every occurrence of the secret `finder` looks for replaced by [`MARKER`], and
/// how many there were.
fn replace_all(bytes: &[u8], finder: &memchr::memmem::Finder<'_>) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(bytes.len());
    let mut count = 0;
    let mut rest = bytes;
    while let Some(at) = finder.find(rest) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(MARKER);
        rest = &rest[at + finder.needle().len()..];
        count += 1;
    }
    out.extend_from_slice(rest);
    (out, count)
}

/// A response body with `secret` replaced as it streams.
pub(crate) struct Redacting<B> {
    inner: B,
    secret: Vec<u8>,
    /// Searches for `secret`, built once per body.
    finder: memchr::memmem::Finder<'static>,
    /// Bytes held back: they may be the start of the secret.
    carry: BytesMut,
    /// Trailers that arrived while bytes were held back: sent after them.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> Redacting<B> {
    /// Scrubs `secret` from `inner` (a non-empty secret; an empty one passes everything).
    pub(crate) fn new(inner: B, secret: &[u8]) -> Self {
        Self {
            inner,
            secret: secret.to_vec(),
            finder: memchr::memmem::Finder::new(secret).into_owned(),
            carry: BytesMut::new(),
            trailers: None,
            done: false,
        }
    }

    /// Scrubs `chunk` (after the held-back bytes) and returns what can be sent now. The
    /// common case, a chunk with nothing held back and no trace of the secret, is passed on
    /// as it is, without a copy.
    fn scrub(&mut self, chunk: Bytes) -> Bytes {
        if self.secret.is_empty() {
            return chunk;
        }
        if self.carry.is_empty()
            && self.finder.find(&chunk).is_none()
            && partial_tail(&chunk, &self.secret) == 0
        {
            return chunk;
        }
        self.carry.extend_from_slice(&chunk);
        let (scrubbed, _) = replace_all(&self.carry, &self.finder);
        // A full match cannot remain; only a tail that is the start of the secret is held
        // back, so a stream of small events (SSE) still flows event by event.
        let keep = partial_tail(&scrubbed, &self.secret);
        let send = scrubbed.len() - keep;
        self.carry.clear();
        self.carry.extend_from_slice(&scrubbed[send..]);
        Bytes::copy_from_slice(&scrubbed[..send])
    }
}

/// The length of the longest tail of `bytes` that is a proper prefix of `secret`.
fn partial_tail(bytes: &[u8], secret: &[u8]) -> usize {
    let window = (secret.len() - 1).min(bytes.len());
    let start = bytes.len() - window;
    let Some(&first) = secret.first() else {
        return 0;
    };
    // Candidates start where the secret's first byte occurs; the earliest full one wins.
    memchr::memchr_iter(first, &bytes[start..])
        .map(|i| start + i)
        .find(|&at| secret.starts_with(&bytes[at..]))
        .map_or(0, |at| bytes.len() - at)
}

impl<B> Body for Redacting<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            if let Some(trailers) = self.trailers.take() {
                self.done = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = self.scrub(data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        // All held back: wait for more.
                    }
                    Err(frame) => {
                        let Ok(mut trailers) = frame.into_trailers() else {
                            continue; // neither data nor trailers: nothing to pass on
                        };
                        let secret = std::mem::take(&mut self.secret);
                        headers(&mut trailers, &secret);
                        self.secret = secret;
                        self.trailers = Some(trailers);
                        if !self.carry.is_empty() {
                            let out = self.carry.split().freeze();
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                },
                Poll::Ready(None) => {
                    self.done = true;
                    if self.carry.is_empty() {
                        return Poll::Ready(None);
                    }
                    let out = self.carry.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // The length changes when a secret is replaced.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    /// A body of the given data chunks.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(parts: &[&str]) -> Chunks {
        Chunks(
            parts
                .iter()
                .map(|p| Bytes::copy_from_slice(p.as_bytes()))
                .collect(),
        )
    }

    async fn scrubbed(parts: &[&str], secret: &str) -> String {
        let body = Redacting::new(chunks(parts), secret.as_bytes());
        let bytes = body.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_secret_is_replaced_across_chunk_boundaries() {
        let marker = std::str::from_utf8(MARKER).unwrap();
        assert_eq!(
            scrubbed(&["{\"auth\":\"Bearer sec", "ret-token\"}"], "secret-token").await,
            format!("{{\"auth\":\"Bearer {marker}\"}}")
        );
        assert_eq!(
            scrubbed(
                &["s", "e", "c", "r", "e", "t", "-token and secret-token"],
                "secret-token"
            )
            .await,
            format!("{marker} and {marker}")
        );
        // Near misses are kept, byte for byte, including a partial match at the very end.
        assert_eq!(
            scrubbed(&["secret-toke", "n-ish? secret-tok"], "secret-token!").await,
            "secret-token-ish? secret-tok"
        );
        assert_eq!(scrubbed(&["nothing here"], "secret").await, "nothing here");
    }

    #[test]
    fn only_a_possible_start_of_the_secret_is_held_back() {
        assert_eq!(partial_tail(b"data: 0\n\n", b"eyJhbGciOi"), 0);
        assert_eq!(partial_tail(b"token eyJh", b"eyJhbGciOi"), 4);
        assert_eq!(partial_tail(b"e", b"eyJ"), 1);
        assert_eq!(partial_tail(b"ee", b"eyJ"), 1);
        assert_eq!(
            partial_tail(b"eyJ", b"eyJ"),
            0,
            "a full match is not a partial one"
        );
    }

    #[tokio::test]
    async fn small_chunks_flow_without_waiting() {
        let mut body = Redacting::new(
            chunks(&["data: 0\n\n", "data: 1\n\n"]),
            b"eyJhbGciOiJSUzI1NiJ9",
        );
        let first = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "data: 0\n\n");
    }

    #[test]
    fn header_values_are_scrubbed() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-echo",
            HeaderValue::from_static("Bearer abc123 and abc123"),
        );
        h.insert("x-other", HeaderValue::from_static("fine"));
        assert_eq!(headers(&mut h, b"abc123"), 2);
        assert_eq!(
            h["x-echo"].as_bytes(),
            [b"Bearer ".as_slice(), MARKER, b" and ", MARKER].concat()
        );
        assert_eq!(h["x-other"], "fine");
    }
}
