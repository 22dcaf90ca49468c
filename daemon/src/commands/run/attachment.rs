//! One attachment of the daemon: a cgroup the kernel programs are attached to, the proxy and
//! DNS listeners in its processes' network namespace, and the accept loops serving them.
//!
//! The listeners outlive any one proxy: a reload starts new accept loops (on duplicates of
//! the same sockets) with a proxy built from the new configuration, then stops the old
//! loops. Connections already accepted keep the proxy they started with, so a reload drops
//! nothing.

use std::{
    net::{TcpListener, UdpSocket},
    sync::Arc,
};

use anyhow::Context as _;
use egressd_proxy::Proxy;
use tokio_util::sync::CancellationToken;

use crate::{
    control::AttachmentInfo,
    loader::{Links, PinnedLinks},
    sandbox::{cgroup::Cgroup, netns::NetnsSockets},
};

/// A cgroup being firewalled.
pub struct Attachment {
    /// The name in status output and in the `sandbox` field of its audit records.
    pub name: String,
    /// The cgroup (opened, not owned: detaching leaves it and its processes alone).
    pub cgroup: Cgroup,
    /// How the namespace was named, for status.
    pub netns_label: Option<String>,
    /// Sockets in that namespace, for allowed loopback destinations there.
    pub loopback: Option<Arc<NetnsSockets>>,
    /// The attached programs; `None` once detached.
    pub links: Option<AttachedLinks>,
    /// A bind mount of the namespace under `/run/egressd/netns/` (when not the daemon's),
    /// so that a restarted daemon can find it again.
    pub netns_pin: Option<std::path::PathBuf>,
    /// Proxy listeners (IPv4, and IPv6 when available), in the namespace's loopback.
    pub tcp: Vec<TcpListener>,
    /// DNS listeners, likewise.
    pub udp: Vec<UdpSocket>,
    /// The IPv4 proxy port.
    pub proxy_port: u16,
    /// The IPv4 DNS port.
    pub dns_port: u16,
    /// Stops the current accept loops.
    pub serving: CancellationToken,
    /// When it was attached.
    pub since: String,
    /// Container runtime sockets closed to the job's user (`attach --job`), reopened when it
    /// is detached.
    pub closed: Vec<crate::sandbox::runtime_acl::Closed>,
    /// Stops following Docker's events for the containers this job starts
    /// (`attach --job --allow-docker`).
    pub docker_watch: Option<CancellationToken>,
    /// The named policy it runs under (`--policy-dir`), else the daemon's own.
    pub policy: Option<String>,
}

/// How the programs are held.
pub enum AttachedLinks {
    /// By this process only: released if it dies (no bpffs).
    Plain(Links),
    /// Pinned on bpffs: the cgroup stays redirected (fail closed) if the daemon dies.
    Pinned(PinnedLinks),
}

impl Attachment {
    /// Starts accept loops on duplicates of the listeners with `proxy`, then stops the
    /// previous loops (if any). Must run inside the runtime.
    pub fn serve(&mut self, proxy: &Arc<Proxy>) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        for listener in &self.tcp {
            let dup = listener
                .try_clone()
                .context("duplicating the proxy listener")?;
            let dup =
                tokio::net::TcpListener::from_std(dup).context("registering the proxy listener")?;
            tokio::spawn(Arc::clone(proxy).serve(dup, token.clone()));
        }
        for socket in &self.udp {
            let dup = socket.try_clone().context("duplicating the DNS listener")?;
            let dup =
                tokio::net::UdpSocket::from_std(dup).context("registering the DNS listener")?;
            tokio::spawn(Arc::clone(proxy).serve_dns(dup, token.clone()));
        }
        let previous = std::mem::replace(&mut self.serving, token);
        previous.cancel();
        Ok(())
    }

    /// What `egressd status` shows.
    pub fn info(&self) -> AttachmentInfo {
        AttachmentInfo {
            name: self.name.clone(),
            cgroup: self.cgroup.path().display().to_string(),
            netns: self.netns_label.clone(),
            proxy_port: self.proxy_port,
            dns_port: self.dns_port,
            since: self.since.clone(),
            policy: self.policy.clone(),
        }
    }
}
