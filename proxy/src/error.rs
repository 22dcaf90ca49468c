//! Errors of each pipeline stage, and the one [`ErrorKind`] derived from them.
//!
//! Every stage has its own small error type ([`ClassifyError`], [`ConnectError`]) whose
//! `Display` is the human reason written to the audit log. [`ErrorKind::of`] walks an error's
//! `source()` chain once and names the failure class; `respond.rs` turns that class into a
//! status code, so handlers never pick one by hand.
//!
//! Messages are lowercase, without a trailing period, and never contain header values or
//! request bodies.

use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr};

/// An error from [`Proxy::new`](crate::Proxy::new): the proxy could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The system DNS configuration (`/etc/resolv.conf`) could not be read. Configure
    /// explicit DNS servers instead, or fix the file.
    #[error("reading the system DNS configuration")]
    SystemDns(#[source] hickory_resolver::net::NetError),
    /// The DNS resolver could not be built from the configured servers.
    #[error("building the DNS resolver")]
    Resolver(#[source] hickory_resolver::net::NetError),
    /// TLS interception could not be set up; the text says what and how to fix it.
    #[error("setting up TLS interception: {0}")]
    Interception(String),
}

/// Why the first bytes of a connection did not yield a destination to decide on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClassifyError {
    /// The client closed the connection before it sent a complete ClientHello or request head.
    #[error("client closed the connection before sending a request")]
    Closed,
    /// A ClientHello that rustls could not parse carries the ECH extension (0xfe0d). (A
    /// well-formed hello with ECH is decided on its outer SNI; see `ClientHello::ech`.)
    #[error("encrypted ClientHello hides the destination")]
    EncryptedClientHello {
        /// The outer SNI, which names the ECH provider, not the destination.
        public_name: Option<String>,
    },
    /// The HTTP request head did not fit in the classification buffer.
    #[error("HTTP request head larger than {limit} bytes")]
    HttpHeadTooLarge {
        /// The buffer limit in bytes.
        limit: usize,
    },
    /// The HTTP request head has more headers than egressd reads.
    #[error("HTTP request head has more than {limit} headers")]
    TooManyHeaders {
        /// The most headers accepted.
        limit: usize,
    },
    /// Reading from the client failed.
    #[error("reading from the client")]
    Io(#[source] io::Error),
    /// The bytes started like a TLS handshake but are not a ClientHello rustls accepts.
    #[error("malformed ClientHello")]
    MalformedClientHello {
        /// What was wrong, in rustls's words or ours.
        detail: String,
    },
    /// The bytes started like an HTTP request but the head does not parse.
    #[error("malformed HTTP request head")]
    MalformedHttp(#[source] httparse::Error),
    /// The client sent nothing complete within the classification timeout (it was silent,
    /// or slow: a slowloris).
    #[error(
        "no complete ClientHello or request head within the handshake timeout (timeouts.classify)"
    )]
    Timeout,
    /// The ClientHello did not fit in the classification buffer.
    #[error("ClientHello larger than {limit} bytes")]
    TlsTooLarge {
        /// The buffer limit in bytes.
        limit: usize,
    },
    /// Neither TLS nor HTTP/1: egressd cannot name the destination of other protocols.
    #[error("unrecognised protocol (neither TLS nor HTTP/1)")]
    UnknownProtocol,
}

impl ClassifyError {
    /// Returns true if and only if the client sent an HTTP request head too large to read
    /// (answered `431`).
    pub(crate) fn is_head_too_large(&self) -> bool {
        matches!(
            self,
            Self::HttpHeadTooLarge { .. } | Self::TooManyHeaders { .. }
        )
    }

    /// Returns true if and only if the client was speaking TLS when it failed.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(
            self,
            Self::EncryptedClientHello { .. }
                | Self::MalformedClientHello { .. }
                | Self::TlsTooLarge { .. }
        )
    }
}

/// Why an allowed destination could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The resolver answered with no address at all.
    #[error("{name} has no address")]
    NoAddress {
        /// The name that was looked up.
        name: String,
    },
    /// Every address the resolver returned is in a range egressd refuses to dial (loopback,
    /// private, metadata, ...). A rule that names the address lifts this guard.
    #[error("{name} resolved to a {range} address ({addr}), which egressd refuses to dial")]
    Refused {
        /// The name that was looked up.
        name: String,
        /// The first refused address.
        addr: IpAddr,
        /// The range it falls in, as `conn::connect::guard` names it.
        range: &'static str,
    },
    /// The DNS lookup failed.
    #[error("resolving {name}")]
    Resolve {
        /// The name that was looked up.
        name: String,
        /// The resolver's error.
        #[source]
        source: hickory_resolver::net::NetError,
    },
    /// The DNS lookup did not answer within the resolve timeout.
    #[error("resolving {name} timed out")]
    ResolveTimeout {
        /// The name that was looked up.
        name: String,
    },
    /// Every address failed to connect; this is the last failure.
    #[error("connecting to {addr}")]
    Dial {
        /// The address that was dialled.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// Every address timed out; this is the last one tried.
    #[error("connecting to {addr} timed out")]
    DialTimeout {
        /// The address that was dialled.
        addr: SocketAddr,
    },
}

/// The class of a failure: what the audit log, metrics and `respond.rs` key on.
///
/// Derived once per failure by [`ErrorKind::of`]; never matched on message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The client sent something egressd cannot classify or parse.
    BadClient,
    /// The client hid the destination (ECH).
    HiddenDestination,
    /// The destination is allowed but resolved to a refused address range.
    RefusedAddress,
    /// The client was too slow to say where it was going.
    ClientTimeout,
    /// DNS or TCP toward the upstream failed.
    UpstreamUnreachable,
    /// DNS or TCP toward the upstream timed out.
    UpstreamTimeout,
    /// Any other I/O failure.
    Io,
}

impl ErrorKind {
    /// Walks `err` and its `source()` chain and returns the class of the first stage error
    /// found, or [`ErrorKind::Io`].
    pub fn of(err: &(dyn StdError + 'static)) -> Self {
        let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(e) = e.downcast_ref::<ClassifyError>() {
                return match e {
                    ClassifyError::EncryptedClientHello { .. } => Self::HiddenDestination,
                    ClassifyError::Timeout => Self::ClientTimeout,
                    ClassifyError::Io(_) | ClassifyError::Closed => Self::Io,
                    _ => Self::BadClient,
                };
            }
            if let Some(e) = e.downcast_ref::<ConnectError>() {
                return match e {
                    ConnectError::Refused { .. } => Self::RefusedAddress,
                    ConnectError::ResolveTimeout { .. } | ConnectError::DialTimeout { .. } => {
                        Self::UpstreamTimeout
                    }
                    _ => Self::UpstreamUnreachable,
                };
            }
            // `io::Error::source` skips a wrapped payload; look at the payload itself.
            cur = match e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
                Some(inner) => Some(inner as &(dyn StdError + 'static)),
                None => e.source(),
            };
        }
        Self::Io
    }

    /// Returns true if and only if this failure is egressd refusing traffic (audited as a
    /// denial), as opposed to an allowed destination that could not be reached.
    pub fn is_denial(self) -> bool {
        matches!(
            self,
            Self::BadClient | Self::HiddenDestination | Self::RefusedAddress | Self::ClientTimeout
        )
    }
}

/// The first error of type `T` in `error`'s source chain.
pub(crate) fn find_cause<'a, T: StdError + 'static>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// Renders `err` and its sources as one line, `outer: inner: innermost`, for the audit log.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_is_found_through_a_wrapping_io_error() {
        let inner = ConnectError::Refused {
            name: "x.test".into(),
            addr: IpAddr::from([127, 0, 0, 1]),
            range: "loopback",
        };
        let outer = io::Error::other(inner);
        assert_eq!(ErrorKind::of(&outer), ErrorKind::RefusedAddress);
        assert!(ErrorKind::of(&outer).is_denial());
        assert_eq!(
            ErrorKind::of(&ClassifyError::Timeout),
            ErrorKind::ClientTimeout
        );
        assert_eq!(ErrorKind::of(&io::Error::other("x")), ErrorKind::Io);
    }

    #[test]
    fn chain_joins_sources() {
        let e = ConnectError::Dial {
            addr: "192.0.2.1:443".parse().unwrap(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, "refused"),
        };
        assert_eq!(chain(&e), "connecting to 192.0.2.1:443: refused");
    }
}
