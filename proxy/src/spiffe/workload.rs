//! The SPIFFE Workload API client: the `FetchX509SVID` stream, gRPC over a Unix socket.
//!
//! The messages are those of the SPIFFE `workload.proto` (X.509-SVID profile), written by hand
//! with prost's derive so the build needs no `protoc`. The service has no protobuf package, so
//! the method path is `/SpiffeWorkloadAPI/FetchX509SVID`. Every call carries the metadata
//! `workload.spiffe.io: true`, which Workload API servers require (SPIFFE Workload Endpoint
//! §5: a request without it is refused with `InvalidArgument`).
//!
//! This module only speaks the protocol. Parsing the certificates is `svid.rs`; keeping them
//! current (reconnects, backoff) is `source.rs`.
//!
//! # Security
//!
//! [`X509Svid`] carries a private key: its `Debug` prints only the SPIFFE ID, the hint and
//! sizes, never the key bytes.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use egressd_config::spiffe::WorkloadEndpoint;
use hyper::Uri;
use hyper::http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;

/// The gRPC method that streams X.509-SVIDs.
pub(crate) const FETCH_X509_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";
/// The metadata key every Workload API request must carry, with the value `true`.
pub(crate) const SECURITY_HEADER: &str = "workload.spiffe.io";

/// `X509SVIDRequest`: no parameters.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct X509SvidRequest {}

/// `X509SVIDResponse`: every SVID the workload is entitled to, with bundles. Each message on
/// the stream replaces the previous one whole.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub(crate) struct X509SvidResponse {
    /// The SVIDs; the first one is the default identity.
    #[prost(message, repeated, tag = "1")]
    pub(crate) svids: Vec<X509Svid>,
    /// Certificate revocation lists, DER (not used: SPIRE does not send them).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub(crate) crl: Vec<Vec<u8>>,
    /// Bundles of foreign trust domains, keyed by the trust domain's SPIFFE ID
    /// (`spiffe://example.org`), each the concatenated DER of its CA certificates.
    #[prost(map = "string, bytes", tag = "3")]
    pub(crate) federated_bundles: HashMap<String, Vec<u8>>,
}

/// `X509SVID`: one identity.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub(crate) struct X509Svid {
    /// The SVID's SPIFFE ID.
    #[prost(string, tag = "1")]
    pub(crate) spiffe_id: String,
    /// The certificate chain, concatenated DER, leaf first.
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) x509_svid: Vec<u8>,
    /// The private key, unencrypted PKCS#8 DER.
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) x509_svid_key: Vec<u8>,
    /// The CA certificates of the SVID's trust domain, concatenated DER.
    #[prost(bytes = "vec", tag = "4")]
    pub(crate) bundle: Vec<u8>,
    /// An operator's hint to tell SVIDs apart (no security meaning).
    #[prost(string, tag = "5")]
    pub(crate) hint: String,
}

impl fmt::Debug for X509SvidResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509SvidResponse")
            .field("svids", &self.svids)
            .field("crl", &self.crl.len())
            .field("federated_bundles", &self.federated_bundles.keys())
            .finish()
    }
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("hint", &self.hint)
            .field(
                "x509_svid",
                &format_args!("<{} bytes>", self.x509_svid.len()),
            )
            .field("x509_svid_key", &"[redacted]")
            .field("bundle", &format_args!("<{} bytes>", self.bundle.len()))
            .finish()
    }
}

/// Why the stream could not be opened, or ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The socket could not be reached (no agent yet, wrong path, permissions).
    #[error("cannot connect to the Workload API at {endpoint}: {why}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The transport's error chain.
        why: String,
    },
    /// The server answered with a gRPC status.
    #[error("the Workload API answered {}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
}

impl FetchError {
    /// Whether the server says this workload has no identity (`PermissionDenied`): any SVID
    /// held so far must not be used any more.
    pub(crate) fn is_denied(&self) -> bool {
        matches!(self, Self::Status(s) if s.code() == tonic::Code::PermissionDenied)
    }

    /// Whether the server answered (with a gRPC status), as opposed to not being reached.
    pub(crate) fn is_status(&self) -> bool {
        matches!(self, Self::Status(_))
    }
}

/// Opens the `FetchX509SVID` stream at `endpoint`.
///
/// # Errors
///
/// [`FetchError::Connect`] when the socket cannot be reached within `connect_timeout`;
/// [`FetchError::Status`] when the server refuses the call.
///
/// # Cancel safety
///
/// Cancel safe: dropping the future closes the connection; nothing is shared.
pub(crate) async fn fetch_x509_svids(
    endpoint: &WorkloadEndpoint,
    connect_timeout: Duration,
) -> Result<tonic::Streaming<X509SvidResponse>, FetchError> {
    let WorkloadEndpoint::Unix(path) = endpoint;
    let connect_error = |why: String| FetchError::Connect {
        endpoint: endpoint.to_string(),
        why,
    };
    // The URI only fills `:authority`; the connector below decides where bytes go.
    let channel = Endpoint::from_static("http://localhost").connect_timeout(connect_timeout);
    let connecting = channel.connect_with_connector(UnixConnector(path.clone()));
    let channel = tokio::time::timeout(connect_timeout, connecting)
        .await
        .map_err(|_| connect_error("timed out".to_owned()))?
        .map_err(|e| connect_error(crate::error::chain(&e)))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| connect_error(crate::error::chain(&e)))?;
    let mut request = tonic::Request::new(X509SvidRequest {});
    request
        .metadata_mut()
        .insert(SECURITY_HEADER, MetadataValue::from_static("true"));
    let codec = tonic_prost::ProstCodec::<X509SvidRequest, X509SvidResponse>::default();
    let response = grpc
        .server_streaming(request, PathAndQuery::from_static(FETCH_X509_SVID), codec)
        .await?;
    Ok(response.into_inner())
}

/// The gRPC code's name as the specifications write it (`PermissionDenied`).
fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// Connects every request of the channel to one Unix socket.
#[derive(Clone)]
pub(crate) struct UnixConnector(pub(crate) PathBuf);

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(UnixStream::connect(path).await?)) })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn messages_encode_with_the_proto_field_numbers() {
        let svid = X509Svid {
            spiffe_id: "spiffe://td/a".into(),
            x509_svid: vec![1, 2],
            x509_svid_key: vec![3],
            bundle: vec![4],
            hint: "h".into(),
        };
        // Field 1 (string): key 0x0a; 2..4 (bytes): 0x12, 0x1a, 0x22; 5 (string): 0x2a.
        let mut expected = vec![0x0a, 13];
        expected.extend_from_slice(b"spiffe://td/a");
        expected.extend_from_slice(&[0x12, 2, 1, 2, 0x1a, 1, 3, 0x22, 1, 4, 0x2a, 1, b'h']);
        assert_eq!(svid.encode_to_vec(), expected);
        let response = X509SvidResponse {
            svids: vec![svid.clone()],
            crl: vec![],
            federated_bundles: HashMap::from([("spiffe://other".to_owned(), vec![9])]),
        };
        let decoded = X509SvidResponse::decode(response.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, response);
        assert_eq!(X509SvidRequest {}.encode_to_vec(), Vec::<u8>::new());
    }

    #[test]
    fn debug_never_prints_the_key() {
        let svid = X509Svid {
            spiffe_id: "spiffe://td/a".into(),
            x509_svid: vec![0; 3],
            x509_svid_key: b"PRIVATE".to_vec(),
            bundle: vec![],
            hint: String::new(),
        };
        let text = format!(
            "{:?}",
            X509SvidResponse {
                svids: vec![svid],
                ..X509SvidResponse::default()
            }
        );
        assert!(
            text.contains("spiffe://td/a") && text.contains("[redacted]"),
            "{text}"
        );
        assert!(
            !text.contains("PRIVATE") && !text.contains("80, 82"),
            "{text}"
        );
    }
}
