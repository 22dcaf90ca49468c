//! The DNS resolver egressd builds for itself, from `--dns-server`s or the system's
//! `resolv.conf`: one builder for the sandbox's upstream connections (`conn/connect.rs`) and
//! for egressd's own requests (`token/dns.rs`), so both ask the same servers the same way.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::error::Error;

/// A resolver asking `servers` (UDP, then TCP, on each one's port), or the system's
/// configuration when `servers` is empty; one attempt per query, `timeout` each.
///
/// # Errors
///
/// [`Error::SystemDns`] when `resolv.conf` cannot be read, [`Error::Resolver`] when the
/// resolver cannot be built.
pub(crate) fn build(servers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, Error> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if servers.is_empty() {
        TokioResolver::builder(provider).map_err(Error::SystemDns)?
    } else {
        let servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    let opts = builder.options_mut();
    opts.timeout = timeout;
    opts.attempts = 1;
    builder.build().map_err(Error::Resolver)
}
