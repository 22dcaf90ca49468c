//! One request on its way to an upstream and its answer on the way back, for both places
//! that inject a credential: interception (`server.rs`) and AWF's api-proxy (`awf/apiproxy.rs`).
//!
//! [`send`] bounds the wait for an answer by `timeouts.idle` and names what went wrong
//! ([`SendError`]: its status, reason and whether a retry may help); the caller renders it in
//! its own shape (`respond.rs`). [`answer`] readies the upstream's answer for the client:
//! hop-by-hop headers dropped and, where a credential was injected, the token scrubbed from
//! headers and body (a compressed answer, which cannot be searched, refused), with the
//! request's audit record written when the body ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;

use super::redact::{self, Needles, Redacting};
use super::upstream::{UpBody, UpstreamConnector, UpstreamTimeout};
use crate::body::{AuditedBody, BodyTooLarge, PendingRecord, ResBody, Sent, strip_hop_by_hop};

/// Why a forwarded request got no answer from its upstream.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No answer within `timeouts.idle`.
    Timeout,
    /// The request body went over `limits.max_body_bytes` while it was being sent.
    TooLarge(BodyTooLarge),
    /// The upstream failed (connect, TLS, protocol): the error, for callers that look at
    /// its causes.
    Failed(hyper_util::client::legacy::Error),
}

impl SendError {
    /// The status the client gets: `504` for a timeout (ours or the connector's), `413`
    /// for an oversize body, `502` otherwise.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Failed(e) if crate::error::find_cause::<UpstreamTimeout>(e).is_some() => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::Failed(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The reason, for the client and the audit record.
    pub(crate) fn reason(&self) -> String {
        match self {
            Self::Timeout => "upstream response timed out (timeouts.idle)".to_owned(),
            Self::TooLarge(over) => over.to_string(),
            Self::Failed(e) => format!("upstream request failed: {}", crate::error::chain(e)),
        }
    }

    /// Whether the same request may succeed later (not when the body is too large).
    pub(crate) fn retryable(&self) -> bool {
        !matches!(self, Self::TooLarge(_))
    }

    /// Whether the upstream was reached and failed (the request went ahead), rather than
    /// never answering or being refused by us.
    pub(crate) fn went_ahead(&self) -> bool {
        matches!(self, Self::Failed(_))
    }
}

/// Sends `req` with `client` and waits at most `idle` for the answer's head. `sent` counts
/// the request body against `limit`: a send that failed because the body went over it is
/// [`SendError::TooLarge`].
pub(crate) async fn send(
    client: &Client<UpstreamConnector, UpBody>,
    req: Request<UpBody>,
    idle: Duration,
    sent: &Sent,
    limit: Option<u64>,
) -> Result<Response<Incoming>, SendError> {
    match tokio::time::timeout(idle, client.request(req)).await {
        Err(_) => Err(SendError::Timeout),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(_)) if sent.over_limit() => Err(SendError::TooLarge(BodyTooLarge {
            limit: limit.unwrap_or_default(),
        })),
        Ok(Err(e)) => Err(SendError::Failed(e)),
    }
}

/// An upstream's answer that cannot be checked for the injected token, refused.
pub(crate) struct Compressed {
    /// The encoding it came in although identity was asked for.
    pub(crate) encoding: String,
    /// The request's record, for the caller's error answer.
    pub(crate) pending: PendingRecord,
}

/// Readies an upstream's answer for the client: hop-by-hop headers dropped (a `101` keeps
/// them: they are the upgrade); with `needles`
/// (a credential was injected) the reason phrase dropped and the token redacted from
/// headers and body, or the answer refused when it is compressed; `pending` written when
/// the body ends.
pub(crate) fn answer<B>(
    mut resp: Response<B>,
    needles: Option<Arc<Needles>>,
    pending: PendingRecord,
) -> Result<Response<ResBody>, Box<Compressed>>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Send + Unpin + 'static,
{
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_by_hop(resp.headers_mut());
    }
    let Some(needles) = needles else {
        return Ok(resp.map(|body| AuditedBody::new(body.boxed_unsync(), pending).boxed_unsync()));
    };
    if let Some(encoding) = redact::compressed(&resp) {
        return Err(Box::new(Compressed { encoding, pending }));
    }
    // A reason phrase of the upstream's own goes to the client as is: drop it.
    resp.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
    if redact::headers(resp.headers_mut(), &needles) > 0 {
        tracing::warn!(credential = ?pending.rec.credential, "the upstream echoed the injected token in a header; redacted");
    }
    resp.headers_mut().remove(hyper::header::CONTENT_LENGTH);
    Ok(resp.map(|body| {
        AuditedBody::new(Redacting::new(body, needles).boxed_unsync(), pending).boxed_unsync()
    }))
}
