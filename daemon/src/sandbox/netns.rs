//! The sandbox's network namespace and the proxy listeners inside it.
//!
//! Sockets stay in the namespace they were created in, so a thread enters the namespace,
//! binds the listeners, and ends; the daemon itself never leaves the host namespace, and
//! nothing is exposed on the host network (DESIGN decision 2).

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::PathBuf,
};

use anyhow::{Context as _, anyhow};
use nix::sched::{CloneFlags, setns, unshare};

/// Which network namespace the sandboxed command gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsMode {
    /// A new namespace holding only loopback: a redirect that failed has no route out.
    New,
    /// The host's namespace: loopback destinations go through policy.
    Host,
    /// An existing namespace (for example `/run/netns/NAME`); treated like the host's.
    Path(PathBuf),
}

impl NetnsMode {
    /// Parses `new`, `host` or a path.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "new" => Ok(Self::New),
            "host" => Ok(Self::Host),
            p if p.starts_with('/') => Ok(Self::Path(PathBuf::from(p))),
            other => Err(anyhow!(
                "--netns {other:?}: expected `new`, `host` or an absolute path such as /run/netns/NAME"
            )),
        }
    }

    /// Whether loopback destinations are shared with others and must go through policy.
    pub fn redirects_loopback(&self) -> bool {
        !matches!(self, Self::New)
    }
}

/// The namespace (when not the host's) and the listeners bound inside it.
pub struct SandboxNet {
    /// The namespace to enter, `None` for the host's.
    pub netns: Option<OwnedFd>,
    /// The proxy's IPv4 listener on 127.0.0.1.
    pub listener4: TcpListener,
    /// The proxy's IPv6 listener on `::1`, if IPv6 works there.
    pub listener6: Option<TcpListener>,
    /// The DNS listener on 127.0.0.1.
    pub dns4: UdpSocket,
    /// The DNS listener on `::1`, if IPv6 works there.
    pub dns6: Option<UdpSocket>,
}

/// Creates (or opens) the namespace and binds the listeners in it.
pub fn prepare(mode: &NetnsMode) -> anyhow::Result<SandboxNet> {
    let mode = mode.clone();
    std::thread::scope(|scope| {
        scope
            .spawn(move || prepare_in_thread(&mode))
            .join()
            .map_err(|_| anyhow!("the thread preparing the network namespace panicked"))?
    })
}

fn prepare_in_thread(mode: &NetnsMode) -> anyhow::Result<SandboxNet> {
    // setns/unshare(CLONE_NEWNET) change only this thread's namespace.
    let netns = match mode {
        NetnsMode::Host => None,
        NetnsMode::New => {
            unshare(CloneFlags::CLONE_NEWNET).context("creating a network namespace (unshare)")?;
            loopback_up().context("bringing up loopback in the new network namespace")?;
            let fd = File::open("/proc/thread-self/ns/net")
                .context("opening the new network namespace")?;
            Some(OwnedFd::from(fd))
        }
        NetnsMode::Path(path) => {
            let fd = File::open(path)
                .with_context(|| format!("opening network namespace {}", path.display()))?;
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering network namespace {}", path.display()))?;
            Some(OwnedFd::from(fd))
        }
    };
    let listener4 = listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .context("binding the proxy listener on 127.0.0.1")?;
    listener4.set_nonblocking(true)?;
    let listener6 = match listen(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))) {
        Ok(l) => {
            l.set_nonblocking(true)?;
            Some(l)
        }
        Err(e) => {
            tracing::warn!("no IPv6 listener on ::1 ({e}); IPv6 connections will be refused");
            None
        }
    };
    let dns4 = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .context("binding the DNS listener on 127.0.0.1")?;
    dns4.set_nonblocking(true)?;
    let dns6 = match UdpSocket::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))) {
        Ok(s) => {
            s.set_nonblocking(true)?;
            Some(s)
        }
        Err(e) => {
            tracing::warn!("no IPv6 DNS listener on ::1 ({e}); IPv6 DNS will be refused");
            None
        }
    };
    Ok(SandboxNet {
        netns,
        listener4,
        listener6,
        dns4,
        dns6,
    })
}

/// The accept queue of a proxy listener: a sandbox opening thousands of connections at once
/// must not see its SYNs dropped (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// A TCP listener on `addr` with a [`BACKLOG`]-deep accept queue.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, socket,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    nix::sys::socket::listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
    Ok(TcpListener::from(fd))
}

/// `ip link set lo up`, with an ioctl on a socket in the current namespace.
fn loopback_up() -> anyhow::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the fd is a socket; req is a valid ifreq naming "lo".
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Sockets for the proxy, created inside the sandbox's network namespace: the proxy reaches
/// the sandbox's own loopback through them (`--netns PATH`, where that loopback is not the
/// daemon's). A thread lives in the namespace and makes sockets on request; it ends when
/// this value is dropped.
pub struct NetnsSockets {
    requests: std::sync::mpsc::Sender<SocketRequest>,
}

type SocketRequest = (
    SocketAddr,
    std::sync::mpsc::SyncSender<std::io::Result<OwnedFd>>,
);

impl NetnsSockets {
    /// Starts the socket thread inside `netns`.
    pub fn start(netns: &OwnedFd) -> anyhow::Result<Self> {
        let netns = netns
            .try_clone()
            .context("duplicating the namespace descriptor")?;
        let (requests, incoming) = std::sync::mpsc::channel::<SocketRequest>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("egressd-netns-sockets".into())
            .spawn(move || {
                let entered = setns(netns.as_fd(), CloneFlags::CLONE_NEWNET);
                let failed = entered.is_err();
                let _ = ready_tx.send(entered);
                if failed {
                    return;
                }
                for (addr, reply) in incoming {
                    let _ = reply.send(new_socket(addr));
                }
            })
            .context("starting the namespace socket thread")?;
        ready_rx
            .recv()
            .context("the namespace socket thread died")?
            .context("entering the sandbox network namespace for loopback sockets")?;
        Ok(Self { requests })
    }
}

impl egressd_proxy::LoopbackSockets for NetnsSockets {
    fn socket(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
        let gone = || std::io::Error::other("the namespace socket thread is gone");
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.requests.send((addr, reply)).map_err(|_| gone())?;
        let fd = answer.recv().map_err(|_| gone())??;
        Ok(tokio::net::TcpSocket::from_std_stream(
            std::net::TcpStream::from(fd),
        ))
    }
}

/// A non-blocking TCP socket of `addr`'s family in the calling thread's namespace.
fn new_socket(addr: SocketAddr) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(NetnsMode::parse("new").unwrap(), NetnsMode::New);
        assert_eq!(NetnsMode::parse("host").unwrap(), NetnsMode::Host);
        assert_eq!(
            NetnsMode::parse("/run/netns/x").unwrap(),
            NetnsMode::Path("/run/netns/x".into())
        );
        let err = NetnsMode::parse("bogus").unwrap_err().to_string();
        assert!(err.contains("expected `new`, `host`"), "{err}");
    }
}
