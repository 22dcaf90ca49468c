//! Stage 3: resolve the allowed *name*, refuse internal addresses, dial.
//!
//! [`Connector::connect`] is only ever called with a destination that policy allowed, so a
//! denied name is never looked up (the lookup itself would leak it). Names are resolved
//! through the configured overrides first (trusted: they may point anywhere, tests use them to
//! reach loopback upstreams), else through hickory. Resolver answers pass through [`guard`]:
//! loopback, private, link-local, metadata, multicast and their IPv6-embedded forms are
//! refused unless the deciding rule allows private addresses. The address that was checked
//! is the address that is dialled, so a rebinding answer between check and dial cannot slip
//! through.
//!
//! # Security
//!
//! The original destination the client dialled is never used here: only the name.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
#[cfg(any(test, feature = "fuzzing"))]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use tokio::net::TcpStream;

use egressd_config::Reach;

use crate::addr::LoopbackSockets;
use crate::error::{ConnectError, Error};
use crate::host::HostName;

/// At most this many resolved addresses are dialled, in answer order.
const MAX_DIAL_ATTEMPTS: usize = 4;

/// A connected upstream socket and the address it was dialled at.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// The connected socket (`TCP_NODELAY` set).
    pub stream: TcpStream,
    /// The address that was dialled.
    pub addr: SocketAddr,
}

/// Resolves and dials upstreams: owned by the `Proxy`, shared by all connections.
pub(crate) struct Connector {
    resolver: TokioResolver,
    overrides: HashMap<String, Vec<IpAddr>>,
    resolve_timeout: Duration,
    connect_timeout: Duration,
    /// Where sockets for loopback destinations come from; unset: this namespace.
    loopback_sockets: std::sync::OnceLock<Arc<dyn LoopbackSockets>>,
    /// Number of DNS lookups issued (overrides excluded); tests assert denied names are never
    /// looked up.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) lookups: AtomicU64,
}

impl Connector {
    /// `timeouts.connect`: also the bound on an upstream TLS handshake.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("overrides", &self.overrides)
            .field("resolve_timeout", &self.resolve_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Builds the resolver from `config.dns_servers` (or the system configuration when empty)
    /// and indexes the `resolve` overrides.
    ///
    /// # Errors
    ///
    /// The system DNS configuration could not be read, or the resolver could not be built.
    pub(crate) fn new(config: &egressd_config::Config) -> Result<Self, Error> {
        let resolver = crate::resolver::build(&config.dns_servers, config.timeouts.resolve)?;
        let overrides = config
            .resolve
            .iter()
            .map(|o| (o.host.clone(), o.addrs.clone()))
            .collect();
        Ok(Self {
            resolver,
            overrides,
            resolve_timeout: config.timeouts.resolve,
            connect_timeout: config.timeouts.connect,
            loopback_sockets: std::sync::OnceLock::new(),
            #[cfg(any(test, feature = "fuzzing"))]
            lookups: AtomicU64::new(0),
        })
    }

    /// The `--resolve` addresses for `name`, if it has an override.
    pub(crate) fn override_for(&self, name: &str) -> Option<&[IpAddr]> {
        self.overrides.get(name).map(Vec::as_slice)
    }

    /// The answer records (CNAME chain included) the resolver has for `name`/`rtype`, for
    /// the sandbox's DNS listener. Only ever called for names the policy allowed.
    pub(crate) async fn lookup(
        &self,
        name: hickory_resolver::proto::rr::Name,
        rtype: hickory_resolver::proto::rr::RecordType,
    ) -> Result<Vec<hickory_resolver::proto::rr::Record>, hickory_resolver::net::NetError> {
        #[cfg(any(test, feature = "fuzzing"))]
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let lookup = tokio::time::timeout(self.resolve_timeout, self.resolver.lookup(name, rtype))
            .await
            .map_err(|_| hickory_resolver::net::NetError::Timeout)??;
        Ok(lookup.answers().to_vec())
    }

    /// Makes loopback destinations dialled through `sockets`.
    pub(crate) fn set_loopback_sockets(&self, sockets: Arc<dyn LoopbackSockets>) {
        // Set once, at start; a second call keeps the first.
        let _ = self.loopback_sockets.set(sockets);
    }

    /// Resolves `host` (an IP is used as is), filters resolver answers through [`guard`] as
    /// far as `reach` says (a private-network name keeps its private answers, never loopback,
    /// link-local or metadata ones), and dials the remaining addresses in order on `port`.
    ///
    /// # Errors
    ///
    /// See [`ConnectError`]: lookup failure or timeout, no address, every address refused,
    /// every dial failed or timed out.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future drops any half-open socket.
    pub(crate) async fn connect(
        &self,
        host: &HostName,
        port: u16,
        reach: Reach,
    ) -> Result<Upstream, ConnectError> {
        let addrs = match host {
            // An IP destination is one a rule named explicitly (raw-IP entry or loopback
            // port): dial it as is.
            HostName::Ip(ip) => vec![*ip],
            HostName::Name(name) => self.resolve(name, reach).await?,
        };
        self.dial(&addrs, port).await
    }

    async fn resolve(&self, name: &str, reach: Reach) -> Result<Vec<IpAddr>, ConnectError> {
        if let Some(addrs) = self.overrides.get(name) {
            // Overrides come from the operator's configuration: trusted, not guarded.
            return Ok(addrs.clone());
        }
        #[cfg(any(test, feature = "fuzzing"))]
        self.lookups.fetch_add(1, Ordering::Relaxed);
        // Absolute name: no search-domain expansion into a name policy never saw.
        let fqdn = format!("{name}.");
        let answer = tokio::time::timeout(self.resolve_timeout, self.resolver.lookup_ip(fqdn))
            .await
            .map_err(|_| ConnectError::ResolveTimeout {
                name: name.to_owned(),
            })?
            .map_err(|source| ConnectError::Resolve {
                name: name.to_owned(),
                source,
            })?;
        let all: Vec<IpAddr> = answer.iter().collect();
        let Some(&first) = all.first() else {
            return Err(ConnectError::NoAddress {
                name: name.to_owned(),
            });
        };
        if reach == Reach::Any {
            return Ok(all);
        }
        let allowed: Vec<IpAddr> = all
            .iter()
            .copied()
            .filter(|ip| admit(reach, *ip).is_ok())
            .collect();
        if allowed.is_empty() {
            let (addr, range) = all
                .iter()
                .find_map(|ip| admit(reach, *ip).err().map(|r| (*ip, r)))
                .unwrap_or((first, "refused"));
            return Err(ConnectError::Refused {
                name: name.to_owned(),
                addr,
                range,
            });
        }
        Ok(allowed)
    }

    async fn dial(&self, addrs: &[IpAddr], port: u16) -> Result<Upstream, ConnectError> {
        let mut last = None;
        for ip in addrs.iter().take(MAX_DIAL_ATTEMPTS) {
            let addr = SocketAddr::new(*ip, port);
            match tokio::time::timeout(self.connect_timeout, self.open(addr)).await {
                Ok(Ok(stream)) => {
                    // Nagle only adds latency to relayed handshakes; failure is harmless.
                    let _ = stream.set_nodelay(true);
                    return Ok(Upstream { stream, addr });
                }
                Ok(Err(source)) => last = Some(ConnectError::Dial { addr, source }),
                Err(_) => last = Some(ConnectError::DialTimeout { addr }),
            }
        }
        Err(last.unwrap_or_else(|| ConnectError::NoAddress {
            name: "(no address)".to_owned(),
        }))
    }

    /// Connects to `addr`; loopback through the sandbox's namespace when one is set.
    async fn open(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        match self.loopback_sockets.get() {
            Some(sockets) if is_local(addr.ip()) => sockets.socket(addr)?.connect(addr).await,
            _ => TcpStream::connect(addr).await,
        }
    }
}

/// Loopback, or the unspecified address (a connect to `0.0.0.0`/`::` reaches this host).
pub(crate) fn is_local(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified()
}

/// Returns `Err(range)` if and only if `ip` is in a range egressd refuses to dial for a name
/// that a resolver answered: loopback, unspecified, link-local, cloud metadata, private
/// (RFC 1918, CGNAT, ULA), multicast, broadcast, reserved, documentation-free special ranges,
/// and the IPv4-mapped, IPv4-compatible, NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`) forms
/// of any of those.
///
/// # Security
///
/// This is the SSRF guard of DESIGN.md decision 3. An allowed (possibly wildcard) name whose
/// owner points it at `127.0.0.1` or `169.254.169.254` must not reach the runner's own
/// services.
/// Whether a name allowed with `reach` may be dialled at `ip`; `Err` names the refused range
/// ([`guard`]'s, except `private` for a private-network name).
fn admit(reach: Reach, ip: IpAddr) -> Result<(), &'static str> {
    match (reach, guard(ip)) {
        (Reach::Any, _) | (Reach::PrivateNetwork, Err("private")) => Ok(()),
        (_, verdict) => verdict,
    }
}

pub(crate) fn guard(ip: IpAddr) -> Result<(), &'static str> {
    match ip {
        IpAddr::V4(v4) => guard_v4(v4),
        IpAddr::V6(v6) => guard_v6(v6),
    }
}

fn guard_v4(ip: Ipv4Addr) -> Result<(), &'static str> {
    let o = ip.octets();
    // AWS/GCP/Azure IMDS, Azure's wire server, Alibaba Cloud's metadata service (inside the
    // CGNAT range, which a private-network name may otherwise reach).
    if ip == Ipv4Addr::new(169, 254, 169, 254)
        || ip == Ipv4Addr::new(168, 63, 129, 16)
        || ip == Ipv4Addr::new(100, 100, 100, 200)
    {
        return Err("metadata");
    }
    if ip.is_loopback() {
        return Err("loopback");
    }
    if ip.is_unspecified() || o[0] == 0 {
        return Err("unspecified");
    }
    if ip.is_link_local() {
        return Err("link-local");
    }
    if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        return Err("private");
    }
    if ip.is_multicast() {
        return Err("multicast");
    }
    if ip.is_broadcast() || o[0] >= 240 {
        return Err("reserved");
    }
    Ok(())
}

fn guard_v6(ip: Ipv6Addr) -> Result<(), &'static str> {
    let s = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Err("metadata");
    }
    if ip.is_loopback() {
        return Err("loopback");
    }
    if ip.is_unspecified() {
        return Err("unspecified");
    }
    // IPv4 embedded forms: judge the IPv4 address inside.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return guard_v4(v4); // ::ffff:a.b.c.d
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return guard_v4(low_v4(s)); // deprecated IPv4-compatible ::a.b.c.d
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return guard_v4(low_v4(s)); // NAT64 64:ff9b::a.b.c.d
    }
    if s[0] == 0x2002 {
        // 6to4 2002:AABB:CCDD::/48 embeds a.b.c.d in segments 1 and 2.
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return guard_v4(Ipv4Addr::new(a, b, c, d));
    }
    if (s[0] & 0xffc0) == 0xfe80 {
        return Err("link-local");
    }
    if (s[0] & 0xfe00) == 0xfc00 {
        return Err("private");
    }
    if (s[0] & 0xff00) == 0xff00 {
        return Err("multicast");
    }
    if (s[0] & 0xffc0) == 0xfec0 {
        return Err("reserved"); // deprecated site-local
    }
    Ok(())
}

fn low_v4(s: [u16; 8]) -> Ipv4Addr {
    let [a, b] = s[6].to_be_bytes();
    let [c, d] = s[7].to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_network_name_keeps_private_answers_only() {
        let admitted = |reach, ip: &str| admit(reach, ip.parse().unwrap());
        for ip in [
            "10.1.2.3",
            "172.16.0.9",
            "192.168.1.1",
            "100.64.0.1",
            "fd12::1",
        ] {
            assert_eq!(admitted(Reach::PrivateNetwork, ip), Ok(()), "{ip}");
            assert_eq!(admitted(Reach::Public, ip), Err("private"), "{ip}");
        }
        for (ip, range) in [
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "metadata"),
            ("168.63.129.16", "metadata"),
            ("100.100.100.200", "metadata"),
            ("169.254.1.1", "link-local"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("fe80::1", "link-local"),
            ("0.0.0.0", "unspecified"),
        ] {
            assert_eq!(admitted(Reach::PrivateNetwork, ip), Err(range), "{ip}");
            assert_eq!(admitted(Reach::Any, ip), Ok(()), "{ip}");
        }
        assert_eq!(admitted(Reach::Public, "140.82.112.3"), Ok(()));
    }

    fn refused(s: &str) -> Option<&'static str> {
        guard(s.parse().unwrap()).err()
    }

    #[test]
    fn guard_refuses_every_internal_range() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("::1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("::", "unspecified"),
            ("169.254.1.1", "link-local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("169.254.169.254", "metadata"),
            ("fd00:ec2::254", "metadata"),
            ("168.63.129.16", "metadata"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "private"),
            ("100.127.255.255", "private"),
            ("fc00::1", "private"),
            ("fdff::1", "private"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("240.0.0.1", "reserved"),
            // IPv6 forms embedding an internal IPv4 address.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "metadata"),
            ("::ffff:10.1.2.3", "private"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "metadata"),
            ("64:ff9b::c0a8:101", "private"),
            ("2002:7f00:1::", "loopback"),
            ("2002:a9fe:a9fe::1", "metadata"),
            ("2002:0a00:0001::", "private"),
        ];
        for (ip, want) in cases {
            assert_eq!(refused(ip), Some(want), "{ip}");
        }
    }

    #[test]
    fn guard_passes_public_addresses() {
        for ip in [
            "1.1.1.1",
            "140.82.112.3",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
            "2002:0101:0101::1",
        ] {
            assert_eq!(refused(ip), None, "{ip}");
        }
    }
}
