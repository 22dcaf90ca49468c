//! Token usage of api-proxy responses, for AWF's `api-proxy-logs/token-usage.jsonl`
//! (`reference/awf.md` §5.7), which gh-aw's AI-credit accounting reads.
//!
//! [`UsageTap`] wraps a provider's response body and passes every frame on unchanged; on the
//! side it reads the usage the provider reports: from the whole JSON body (kept up to
//! [`MAX_JSON`]), or from the `data:` lines of a server-sent event stream, one line at a time
//! (only lines that mention usage or a model are parsed). When the body ends it gives a
//! [`Usage`] to its sink, once. The shapes understood:
//!
//! | provider | where |
//! |---|---|
//! | OpenAI chat completions, Copilot | `usage.prompt_tokens`, `completion_tokens`, `prompt_tokens_details.cached_tokens`, `completion_tokens_details.reasoning_tokens`; streamed in the last chunk |
//! | OpenAI responses | `usage.input_tokens`, `output_tokens`, `input_tokens_details.cached_tokens`, `output_tokens_details.reasoning_tokens`; streamed in `response.completed` |
//! | Anthropic messages | `usage.input_tokens`, `output_tokens`, `cache_read_input_tokens`, `cache_creation_input_tokens`; streamed in `message_start` and `message_delta` |
//! | Gemini | `usageMetadata.promptTokenCount`, `candidatesTokenCount`, `cachedContentTokenCount`, `thoughtsTokenCount` |

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use serde_json::Value;

use crate::body::ResBody;

/// Most bytes of a JSON response kept to read its usage; a larger one is not read.
pub(crate) const MAX_JSON: usize = 4 << 20;
/// Longest SSE line kept while it is incomplete; a longer one is skipped.
const MAX_LINE: usize = 1 << 20;

/// What one response used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// The model the provider says answered.
    pub(crate) model: Option<String>,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cache_read_tokens: u64,
    pub(crate) cache_write_tokens: u64,
    pub(crate) reasoning_tokens: Option<u64>,
    /// Whether any usage was found at all.
    pub(crate) found: bool,
}

impl Usage {
    /// Takes what `event` (a whole response, or one streamed event) says.
    pub(crate) fn absorb(&mut self, event: &Value) {
        let model = [
            &event["model"],
            &event["message"]["model"],
            &event["response"]["model"],
            &event["modelVersion"],
        ]
        .into_iter()
        .find_map(Value::as_str);
        if let Some(model) = model {
            self.model = Some(model.to_owned());
        }
        for usage in [
            &event["usage"],
            &event["message"]["usage"],
            &event["response"]["usage"],
            &event["usageMetadata"],
        ] {
            if usage.is_object() {
                self.absorb_usage(usage);
            }
        }
    }

    fn absorb_usage(&mut self, u: &Value) {
        let first = |paths: &[&[&str]]| {
            paths.iter().find_map(|path| {
                path.iter()
                    .try_fold(u, |v, key| v.get(key))
                    .and_then(Value::as_u64)
            })
        };
        let mut set = |slot: &mut u64, value: Option<u64>| {
            if let Some(v) = value {
                *slot = v;
                self.found = true;
            }
        };
        let (mut input, mut output, mut read, mut write) = (
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
        );
        set(
            &mut input,
            first(&[&["prompt_tokens"], &["input_tokens"], &["promptTokenCount"]]),
        );
        set(
            &mut output,
            first(&[
                &["completion_tokens"],
                &["output_tokens"],
                &["candidatesTokenCount"],
            ]),
        );
        set(
            &mut read,
            first(&[
                &["prompt_tokens_details", "cached_tokens"],
                &["input_tokens_details", "cached_tokens"],
                &["cache_read_input_tokens"],
                &["cachedContentTokenCount"],
            ]),
        );
        set(&mut write, first(&[&["cache_creation_input_tokens"]]));
        (
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
        ) = (input, output, read, write);
        if let Some(r) = first(&[
            &["completion_tokens_details", "reasoning_tokens"],
            &["output_tokens_details", "reasoning_tokens"],
            &["thoughtsTokenCount"],
        ]) {
            self.reasoning_tokens = Some(r);
        }
    }
}

/// How the tap reads the body.
enum Reading {
    /// A JSON body, kept whole (until it is too large: then `None`).
    Json(Option<Vec<u8>>),
    /// An event stream: the incomplete last line.
    Events(Vec<u8>),
}

/// A response body that reads the provider's usage on its way to the client.
pub(crate) struct UsageTap<F: FnOnce(Usage) + Send> {
    inner: ResBody,
    reading: Reading,
    usage: Usage,
    done: Option<F>,
}

impl<F: FnOnce(Usage) + Send> UsageTap<F> {
    /// Taps `inner`; `streaming` for `text/event-stream`. `done` gets the usage when the
    /// body ends (or is dropped), once.
    pub(crate) fn new(inner: ResBody, streaming: bool, done: F) -> Self {
        let reading = if streaming {
            Reading::Events(Vec::new())
        } else {
            Reading::Json(Some(Vec::new()))
        };
        Self {
            inner,
            reading,
            usage: Usage::default(),
            done: Some(done),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        match &mut self.reading {
            Reading::Json(kept) => {
                if let Some(buf) = kept {
                    if buf.len() + data.len() > MAX_JSON {
                        *kept = None;
                    } else {
                        buf.extend_from_slice(data);
                    }
                }
            }
            Reading::Events(partial) => {
                let mut rest = data;
                while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                    let (line, tail) = rest.split_at(end);
                    rest = &tail[1..];
                    if partial.is_empty() {
                        event_line(&mut self.usage, line);
                    } else {
                        partial.extend_from_slice(line);
                        event_line(&mut self.usage, partial);
                        partial.clear();
                    }
                }
                if partial.len() + rest.len() <= MAX_LINE {
                    partial.extend_from_slice(rest);
                } else {
                    partial.clear();
                }
            }
        }
    }

    fn finish(&mut self) {
        let Some(done) = self.done.take() else { return };
        match &mut self.reading {
            Reading::Json(Some(buf)) => {
                if let Ok(value) = serde_json::from_slice::<Value>(buf) {
                    self.usage.absorb(&value);
                }
            }
            Reading::Events(partial) if !partial.is_empty() => {
                let line = std::mem::take(partial);
                event_line(&mut self.usage, &line);
            }
            _ => {}
        }
        done(std::mem::take(&mut self.usage));
    }
}

/// One SSE line: a `data:` line that mentions usage or a model is parsed and absorbed.
fn event_line(usage: &mut Usage, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    let mentions = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
    if !(mentions(b"sage") || mentions(b"model")) {
        return; // most deltas: text only
    }
    if let Ok(value) = serde_json::from_slice::<Value>(data.trim_ascii()) {
        usage.absorb(&value);
    }
}

impl<F: FnOnce(Usage) + Send + Unpin> Body for UsageTap<F> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    self.feed(data);
                }
            }
            None => self.finish(),
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(Usage) + Send> Drop for UsageTap<F> {
    fn drop(&mut self) {
        // A body the client stopped reading still used what the provider counted so far.
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// A body of the given chunks, one frame each.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn usage_of(value: &str) -> Usage {
        let mut u = Usage::default();
        u.absorb(&serde_json::from_str(value).unwrap());
        u
    }

    #[test]
    fn the_providers_shapes() {
        let chat = usage_of(
            r#"{"model":"gpt-4o","usage":{"prompt_tokens":12,"completion_tokens":5,
                "prompt_tokens_details":{"cached_tokens":4},
                "completion_tokens_details":{"reasoning_tokens":2}}}"#,
        );
        assert_eq!(
            (chat.model.as_deref(), chat.input_tokens, chat.output_tokens),
            (Some("gpt-4o"), 12, 5)
        );
        assert_eq!(
            (chat.cache_read_tokens, chat.reasoning_tokens),
            (4, Some(2))
        );
        let claude = usage_of(
            r#"{"model":"claude-sonnet-4","usage":{"input_tokens":30,"output_tokens":7,
                "cache_read_input_tokens":20,"cache_creation_input_tokens":3}}"#,
        );
        assert_eq!(
            (
                claude.input_tokens,
                claude.output_tokens,
                claude.cache_read_tokens,
                claude.cache_write_tokens
            ),
            (30, 7, 20, 3)
        );
        let gemini = usage_of(
            r#"{"modelVersion":"gemini-2.5-pro","usageMetadata":{"promptTokenCount":9,
                "candidatesTokenCount":4,"cachedContentTokenCount":1,"thoughtsTokenCount":6}}"#,
        );
        assert_eq!(gemini.model.as_deref(), Some("gemini-2.5-pro"));
        assert_eq!((gemini.input_tokens, gemini.output_tokens), (9, 4));
        assert_eq!(gemini.reasoning_tokens, Some(6));
        let none = usage_of(r#"{"data":[{"id":"gpt-4o"}]}"#);
        assert!(!none.found);
    }

    /// Runs `chunks` through a tap and returns the usage it reported.
    async fn tapped(chunks: &[&str], streaming: bool) -> (Usage, Vec<u8>) {
        let inner = Chunks(
            chunks
                .iter()
                .map(|c| Bytes::copy_from_slice(c.as_bytes()))
                .collect(),
        )
        .boxed_unsync();
        let got = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&got);
        let tap = UsageTap::new(inner, streaming, move |u| {
            *sink.lock().unwrap() = Some(u);
        });
        let body = tap.collect().await.unwrap().to_bytes().to_vec();
        let usage = got.lock().unwrap().take().expect("reported at the end");
        (usage, body)
    }

    #[tokio::test]
    async fn an_anthropic_stream_split_anywhere_is_read_and_passed_on_unchanged() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1,\"cache_read_input_tokens\":10}}}\n\n\
                      event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n\
                      event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        for split in [1, 7, 50, 120, stream.len() - 1] {
            let (a, b) = stream.split_at(split);
            let (usage, body) = tapped(&[a, b], true).await;
            assert_eq!(body, stream.as_bytes());
            assert_eq!(usage.model.as_deref(), Some("claude-x"), "split {split}");
            assert_eq!(
                (
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cache_read_tokens
                ),
                (25, 15, 10)
            );
        }
    }

    #[tokio::test]
    async fn an_openai_stream_and_a_json_body() {
        let stream = "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n\
                      data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\r\n\r\n\
                      data: [DONE]\r\n\r\n";
        let (usage, _) = tapped(&[stream], true).await;
        assert_eq!((usage.input_tokens, usage.output_tokens), (3, 2));
        let json = r#"{"model":"gpt-4o","usage":{"prompt_tokens":8,"completion_tokens":1}}"#;
        let (usage, body) = tapped(&[&json[..10], &json[10..]], false).await;
        assert_eq!(body, json.as_bytes());
        assert_eq!((usage.input_tokens, usage.output_tokens), (8, 1));
    }
}
