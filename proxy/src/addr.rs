//! Address newtypes, and how the proxy learns where a client was going.
//!
//! The kernel redirects a sandbox's `connect()` to the proxy listener and remembers the
//! destination the client dialled. [`OrigDstLookup`] is how the proxy asks for it; the
//! daemon implements it over the eBPF map. The answer is an [`OrigDst`]: recorded in the
//! audit log, used for its port, and dialled only for loopback-port rules and raw-IP
//! entries, never trusted as the destination of a named connection.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

/// The address of a sandboxed client, as `accept()` returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// The destination a client dialled before the kernel redirected it to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDst(pub SocketAddr);

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for OrigDst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How the proxy recovers the destination the client dialled.
///
/// The daemon implements it with the eBPF map (it needs the accepted socket's netns cookie,
/// hence the fd). Called once per accepted connection, on the accept task: it must not block.
///
/// # Security
///
/// Returning `None` denies the connection ("no original destination recorded"). An
/// implementation must never guess.
pub trait OrigDstLookup: Send + Sync + 'static {
    /// The original destination of the connection `accepted`, from `peer` (the client) to
    /// `local` (the proxy listener), or `None` if none was recorded.
    fn lookup(
        &self,
        accepted: BorrowedFd<'_>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<SocketAddr>;
}

/// Creates the sockets the proxy uses to reach *loopback* destinations a rule allows.
///
/// Loopback is per network namespace: when the sandbox shares a namespace that is not the
/// proxy's own (`--netns PATH`), its `127.0.0.1` is not the proxy's. The daemon then supplies
/// an implementation that creates sockets inside the sandbox's namespace (a socket stays in
/// the namespace it was created in). Without one, sockets are created in the proxy's own
/// namespace, which is right when the sandbox shares it (`--netns host`).
pub trait LoopbackSockets: Send + Sync + 'static {
    /// A new, unconnected, non-blocking TCP socket of `addr`'s family, in the namespace
    /// whose loopback `addr` names. Called once per allowed loopback connection; it may
    /// block briefly.
    ///
    /// # Errors
    ///
    /// The socket could not be created.
    fn socket(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket>;
}

/// A fixed [`OrigDstLookup`] for tests: per-client entries, else one answer for everyone.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
pub struct StaticOrigDst {
    fallback: Option<SocketAddr>,
    by_peer: std::sync::Mutex<std::collections::HashMap<SocketAddr, SocketAddr>>,
}

#[cfg(any(test, feature = "test-util"))]
impl StaticOrigDst {
    /// Answers `orig` for every connection (unless [`StaticOrigDst::insert`] says otherwise).
    pub fn always(orig: SocketAddr) -> Self {
        Self {
            fallback: Some(orig),
            ..Self::default()
        }
    }

    /// Answers `None` (no original destination) unless an entry is inserted.
    pub fn none() -> Self {
        Self::default()
    }

    /// Answers `orig` for connections from `peer`.
    pub fn insert(&self, peer: SocketAddr, orig: SocketAddr) {
        self.by_peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(peer, orig);
    }
}

#[cfg(any(test, feature = "test-util"))]
impl OrigDstLookup for StaticOrigDst {
    fn lookup(&self, _: BorrowedFd<'_>, peer: SocketAddr, _: SocketAddr) -> Option<SocketAddr> {
        let map = self
            .by_peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&peer).copied().or(self.fallback)
    }
}
