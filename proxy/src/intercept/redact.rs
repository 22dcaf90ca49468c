//! Credential reflection (bypass catalogue §12): an upstream that echoes the request (an
//! echo endpoint, an error message quoting the `Authorization` header, a body stored and
//! served back) would hand the sandbox the real token egressd injected. Responses to
//! injected requests are therefore scrubbed of that token, in header values, trailers and the
//! body, before the sandbox sees them.
//!
//! The token is looked for in every form an echo may carry it ([`Needles`]): as is,
//! URL-encoded, JSON-escaped (`\/`), and base64-encoded at each of the three alignments in
//! both alphabets (an echoed `Authorization: Basic base64(user:token)`). Compressed answers
//! cannot be searched: injected requests ask the upstream for `identity`, and a compressed
//! answer to one is refused (`server.rs`).
//!
//! The body is scrubbed as it streams: each chunk is searched together with the tail of the
//! previous one, and a tail that may be the start of a needle is held back until the next
//! chunk (or the end) shows it is not. Only the needles are replaced; the replacement says
//! what happened.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderValue};

/// What replaces the token.
pub(crate) const MARKER: &[u8] = b"[token redacted by egressd]";

/// Encoded forms shorter than this are not searched for (they would match ordinary text).
const MIN_FORM: usize = 12;

/// The forms of one secret that an echo may carry, searched together.
pub(crate) struct Needles {
    forms: Vec<Vec<u8>>,
    search: AhoCorasick,
}

impl std::fmt::Debug for Needles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Needles")
            .field("forms", &self.forms.len())
            .finish_non_exhaustive()
    }
}

impl Needles {
    /// The forms of `secret`; `None` for an empty secret.
    pub(crate) fn new(secret: &[u8]) -> Option<Arc<Self>> {
        if secret.is_empty() {
            return None;
        }
        let mut forms = vec![secret.to_vec()];
        let mut add = |form: Vec<u8>| {
            if form.len() >= MIN_FORM.min(secret.len()) && !forms.contains(&form) {
                forms.push(form);
            }
        };
        let url = url_encoded(secret);
        add(lower_hex_escapes(&url));
        add(url);
        add(json_escaped(secret));
        for engine in [
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            for offset in 0..3 {
                if let Some(form) = base64_at(secret, offset, engine) {
                    add(form);
                }
            }
        }
        let search = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&forms)
            .ok()?;
        Some(Arc::new(Self { forms, search }))
    }

    /// `bytes` with every form replaced by [`MARKER`], and how many there were.
    pub(crate) fn replace_all(&self, bytes: &[u8]) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(bytes.len());
        let mut count = 0;
        let mut last = 0;
        for m in self.search.find_iter(bytes) {
            out.extend_from_slice(&bytes[last..m.start()]);
            out.extend_from_slice(MARKER);
            last = m.end();
            count += 1;
        }
        out.extend_from_slice(&bytes[last..]);
        (out, count)
    }

    /// The length of the longest tail of `bytes` that is a proper prefix of some form.
    pub(crate) fn partial_tail(&self, bytes: &[u8]) -> usize {
        self.forms
            .iter()
            .map(|form| partial_tail(bytes, form))
            .max()
            .unwrap_or(0)
    }
}

/// The [`Needles`] of the last few secrets, so that requests carrying the same token (for
/// the token's lifetime, on any connection) do not build its search again: the forms and
/// their automaton are built once per token, not once per request or connection.
#[derive(Default)]
pub(crate) struct NeedleCache(std::sync::Mutex<Vec<Arc<Needles>>>);

/// How many secrets a [`NeedleCache`] keeps (the least recently used goes first): one per
/// credential in use, with room for the tokens that replace them.
const CACHED_SECRETS: usize = 32;

impl NeedleCache {
    /// The needles of `secret` (`None` for an empty one), built only on a miss.
    pub(crate) fn get(&self, secret: &[u8]) -> Option<Arc<Needles>> {
        let mut cached = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = cached.iter().position(|n| n.forms[0] == secret) {
            let hit = cached.remove(at);
            cached.push(Arc::clone(&hit));
            return Some(hit);
        }
        let built = Needles::new(secret)?;
        if cached.len() == CACHED_SECRETS {
            cached.remove(0);
        }
        cached.push(Arc::clone(&built));
        Some(built)
    }
}

/// `secret` with every byte outside RFC 3986's unreserved set percent-encoded.
fn url_encoded(secret: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(secret.len());
    for &b in secret {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// `encoded` with the hex digits of its `%XY` escapes in lower case (`%2f`).
fn lower_hex_escapes(encoded: &[u8]) -> Vec<u8> {
    let mut out = encoded.to_vec();
    let mut i = 0;
    while i + 2 < out.len() {
        if out[i] == b'%' {
            out[i + 1] = out[i + 1].to_ascii_lowercase();
            out[i + 2] = out[i + 2].to_ascii_lowercase();
            i += 3;
        } else {
            i += 1;
        }
    }
    out
}

/// `secret` as a JSON encoder that escapes `/` writes it (`\/`), with `"` and `\` escaped.
fn json_escaped(secret: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(secret.len());
    for &b in secret {
        if matches!(b, b'/' | b'"' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// The part of base64(`x` + `secret` + `y`) that depends on `secret` alone, for any `x` of
/// `offset` bytes (mod 3) and any `y`: the whole 3-byte groups made of secret bytes only.
fn base64_at(
    secret: &[u8],
    offset: usize,
    engine: &base64::engine::GeneralPurpose,
) -> Option<Vec<u8>> {
    let first = (3 - offset % 3) % 3;
    let end = first + (secret.len().checked_sub(first)? / 3) * 3;
    let whole = secret.get(first..end).filter(|w| !w.is_empty())?;
    Some(engine.encode(whole).into_bytes())
}

/// Replaces every form of the secret in `headers`' values; returns how many were.
pub(crate) fn headers(headers: &mut HeaderMap, needles: &Needles) -> usize {
    let mut count = 0;
    for value in headers.values_mut() {
        if needles.search.is_match(value.as_bytes()) {
            let (scrubbed, n) = needles.replace_all(value.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&scrubbed) {
                *value = v;
                count += n;
            }
        }
    }
    count
}

/// The response's content coding, unless it is `identity` (or absent): such an answer
/// cannot be searched for the token (injected requests ask for `identity`).
pub(crate) fn compressed<B>(resp: &hyper::Response<B>) -> Option<String> {
    let coding = resp.headers().get(hyper::header::CONTENT_ENCODING)?;
    let coding = coding.to_str().unwrap_or("(not text)").trim();
    (!coding.is_empty() && !coding.eq_ignore_ascii_case("identity")).then(|| coding.to_owned())
}

/// A response body with every form of a secret replaced as it streams.
pub(crate) struct Redacting<B> {
    inner: B,
    needles: Arc<Needles>,
    /// Bytes held back: they may be the start of a form of the secret.
    carry: BytesMut,
    /// Trailers that arrived while bytes were held back: sent after them.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> Redacting<B> {
    /// Scrubs the forms of `needles`' secret from `inner`.
    pub(crate) fn new(inner: B, needles: Arc<Needles>) -> Self {
        Self {
            inner,
            needles,
            carry: BytesMut::new(),
            trailers: None,
            done: false,
        }
    }

    /// Scrubs `chunk` (after the held-back bytes) and returns what can be sent now. The
    /// common case, a chunk with nothing held back and no trace of the secret, is passed on
    /// as it is, without a copy.
    fn scrub(&mut self, chunk: Bytes) -> Bytes {
        if self.carry.is_empty()
            && !self.needles.search.is_match(&chunk[..])
            && self.needles.partial_tail(&chunk) == 0
        {
            return chunk;
        }
        self.carry.extend_from_slice(&chunk);
        let (scrubbed, _) = self.needles.replace_all(&self.carry);
        // A full match cannot remain; only a tail that is the start of a form is held back,
        // so a stream of small events (SSE) still flows event by event.
        let keep = self.needles.partial_tail(&scrubbed);
        let send = scrubbed.len() - keep;
        self.carry.clear();
        self.carry.extend_from_slice(&scrubbed[send..]);
        Bytes::copy_from_slice(&scrubbed[..send])
    }
}

/// The length of the longest tail of `bytes` that is a proper prefix of `secret`.
fn partial_tail(bytes: &[u8], secret: &[u8]) -> usize {
    let window = (secret.len().saturating_sub(1)).min(bytes.len());
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
                        headers(&mut trailers, &self.needles);
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

    /// A body of the given frames (data and trailers).
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
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
        let body = Redacting::new(chunks(parts), Needles::new(secret.as_bytes()).unwrap());
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
            Needles::new(b"eyJhbGciOiJSUzI1NiJ9").unwrap(),
        );
        let first = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "data: 0\n\n");
    }

    #[tokio::test]
    async fn trailers_are_scrubbed_and_come_after_the_held_back_bytes() {
        // Data ending in what may start the token, then trailers echoing it.
        let mut trailers = HeaderMap::new();
        trailers.insert("x-echo", HeaderValue::from_static("Bearer tok-123456789"));
        let inner = Frames(
            [
                Frame::data(Bytes::from_static(b"body tok-1")),
                Frame::trailers(trailers),
            ]
            .into(),
        );
        let body = Redacting::new(inner, Needles::new(b"tok-123456789").unwrap());
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers kept");
        assert_eq!(
            trailers["x-echo"].as_bytes(),
            [b"Bearer ".as_slice(), MARKER].concat()
        );
        assert_eq!(collected.to_bytes(), "body tok-1");
    }

    #[test]
    fn needles_are_built_once_per_secret() {
        let cache = NeedleCache::default();
        let a = cache.get(b"secret-one-0123456789").unwrap();
        let again = cache.get(b"secret-one-0123456789").unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        let b = cache.get(b"secret-two-0123456789").unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(cache.get(b"").is_none());
    }

    #[test]
    fn header_values_are_scrubbed() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-echo",
            HeaderValue::from_static("Bearer abc123 and abc123"),
        );
        h.insert("x-other", HeaderValue::from_static("fine"));
        assert_eq!(headers(&mut h, &Needles::new(b"abc123").unwrap()), 2);
        assert_eq!(
            h["x-echo"].as_bytes(),
            [b"Bearer ".as_slice(), MARKER, b" and ", MARKER].concat()
        );
        assert_eq!(h["x-other"], "fine");
    }

    #[tokio::test]
    async fn every_form_an_echo_may_carry_is_replaced() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        let token = "sk/live+Zm9vYmFy.ab=cd_0123456789";
        let marker = std::str::from_utf8(MARKER).unwrap();
        let url = "sk%2Flive%2BZm9vYmFy.ab%3Dcd_0123456789";
        let json = "sk\\/live+Zm9vYmFy.ab=cd_0123456789";
        let lower = "sk%2flive%2bZm9vYmFy.ab%3dcd_0123456789";
        for form in [
            token.to_owned(),
            url.to_owned(),
            lower.to_owned(),
            json.to_owned(),
        ] {
            let out = scrubbed(&["echo: ", &form[..7], &form[7..], " end"], token).await;
            assert_eq!(out, format!("echo: {marker} end"), "{form}");
        }
        // Basic credentials: base64(user:token) for users of every length mod 3, in both
        // alphabets; no readable run of the token's base64 is left.
        for user in ["u", "us", "use", "user"] {
            for engine in [&STANDARD, &URL_SAFE] {
                let basic = engine.encode(format!("{user}:{token}"));
                let out = scrubbed(&["Authorization: Basic ", &basic], token).await;
                assert!(out.contains(marker), "{user}: {out}");
                let leftover = out
                    .trim_start_matches("Authorization: Basic ")
                    .replace(marker, "");
                assert!(leftover.len() <= 12, "{user}: {out}");
            }
        }
    }
}
