//! Loads the embedded kernel programs once and attaches them to sandbox cgroups (aya).
//!
//! Everything that can fail here fails before the sandboxed command starts: `exec`
//! refuses to run anything unless every program is attached (fail closed).

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, BorrowedFd},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, SockOps,
        cgroup_skb::CgroupSkbLinkId,
        cgroup_sock::CgroupSockLinkId,
        cgroup_sock_addr::CgroupSockAddrLinkId,
        links::{FdLink, PinnedLink},
        sock_ops::SockOpsLinkId,
    },
};
use egressd_ebpf_common::{ClientKey, OrigDst, SandboxConfig, counter};
use egressd_proxy::OrigDstLookup;

use crate::sandbox::cgroup::Cgroup;

/// The kernel programs, built by `build.rs` (aya-build) and embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egressd-ebpf"));

/// The socket-address hooks, by program name.
const SOCK_ADDR_PROGRAMS: [&str; 8] = [
    "egressd_connect4",
    "egressd_connect6",
    "egressd_sendmsg4",
    "egressd_sendmsg6",
    "egressd_recvmsg4",
    "egressd_recvmsg6",
    "egressd_getpeername4",
    "egressd_getpeername6",
];
const SOCK_RELEASE_PROGRAM: &str = "egressd_sock_release";
const SOCK_OPS_PROGRAM: &str = "egressd_sock_ops";
const SKB_EGRESS_PROGRAM: &str = "egressd_skb_egress";

/// The programs attached to one cgroup, for [`Loader::detach`].
#[derive(Debug)]
#[must_use = "dropping the links keeps the programs attached until the loader is dropped"]
pub struct Links {
    cgroup_id: u64,
    sock_addr: Vec<(&'static str, CgroupSockAddrLinkId)>,
    ops: Option<SockOpsLinkId>,
    release: Option<CgroupSockLinkId>,
    skb: Option<CgroupSkbLinkId>,
}

/// The links of one cgroup pinned on bpffs ([`Loader::pin`]): they stay attached when the
/// daemon dies, until [`Loader::release`] or [`unpin_dir`] removes them.
#[derive(Debug)]
pub struct PinnedLinks {
    cgroup_id: u64,
    dir: std::path::PathBuf,
    links: Vec<PinnedLink>,
}

impl PinnedLinks {
    /// The bpffs directory holding the pins.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// The loaded programs and the maps userspace uses. Dropping it detaches every program.
pub struct Loader {
    ebpf: Ebpf,
    sandboxes: HashMap<MapData, u64, SandboxConfig>,
    counters: PerCpuArray<MapData, u64>,
    orig: Arc<MapOrigDst>,
}

impl Loader {
    /// Loads the programs into the kernel (verifier included); attaches nothing yet.
    pub fn load() -> anyhow::Result<Self> {
        raise_memlock_limit();
        let mut ebpf = Ebpf::load(EBPF_OBJECT).context(
            "loading egressd's eBPF programs failed; the kernel needs BPF, BTF and cgroup BPF \
             support (Linux 5.15 or newer) and egressd must run as root",
        )?;
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load()
                .with_context(|| format!("verifying eBPF program {name}"))?;
        }
        let ops: &mut SockOps = program(&mut ebpf, SOCK_OPS_PROGRAM)?;
        ops.load()
            .with_context(|| format!("verifying eBPF program {SOCK_OPS_PROGRAM}"))?;
        let release: &mut CgroupSock = program(&mut ebpf, SOCK_RELEASE_PROGRAM)?;
        release
            .load()
            .with_context(|| format!("verifying eBPF program {SOCK_RELEASE_PROGRAM}"))?;
        let skb: &mut CgroupSkb = program(&mut ebpf, SKB_EGRESS_PROGRAM)?;
        skb.load()
            .with_context(|| format!("verifying eBPF program {SKB_EGRESS_PROGRAM}"))?;

        let sandboxes = HashMap::try_from(take_map(&mut ebpf, "SANDBOXES")?)?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, "COUNTERS")?)?;
        let by_client = HashMap::try_from(take_map(&mut ebpf, "ORIG_BY_CLIENT")?)?;
        Ok(Self {
            ebpf,
            sandboxes,
            counters,
            orig: Arc::new(MapOrigDst {
                map: Mutex::new(by_client),
            }),
        })
    }

    /// Registers the sandbox's settings and attaches every program to its cgroup; returns
    /// the links, which [`Loader::detach`] takes to release this cgroup alone (dropping the
    /// loader releases every cgroup).
    ///
    /// The settings go in first: a connect that reaches the programs before them is
    /// refused, never let through. On failure, whatever was attached is detached again.
    pub fn attach(&mut self, cgroup: &Cgroup, config: SandboxConfig) -> anyhow::Result<Links> {
        self.sandboxes
            .insert(cgroup.id(), config, 0)
            .context("registering the sandbox in the SANDBOXES map")?;
        let mut links = Links {
            cgroup_id: cgroup.id(),
            sock_addr: Vec::new(),
            ops: None,
            release: None,
            skb: None,
        };
        match self.attach_programs(cgroup, &mut links) {
            Ok(()) => Ok(links),
            Err(e) => {
                self.detach(links);
                Err(e)
            }
        }
    }

    fn attach_programs(&mut self, cgroup: &Cgroup, links: &mut Links) -> anyhow::Result<()> {
        let dir = cgroup.dir();
        let path = cgroup.path().display().to_string();
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let id = prog
                .attach(dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to cgroup {path}"))?;
            links.sock_addr.push((name, id));
        }
        let ops: &mut SockOps = program(&mut self.ebpf, SOCK_OPS_PROGRAM)?;
        links.ops = Some(
            ops.attach(dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {SOCK_OPS_PROGRAM} to cgroup {path}"))?,
        );
        let release: &mut CgroupSock = program(&mut self.ebpf, SOCK_RELEASE_PROGRAM)?;
        links.release = Some(
            release
                .attach(dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {SOCK_RELEASE_PROGRAM} to cgroup {path}"))?,
        );
        let skb: &mut CgroupSkb = program(&mut self.ebpf, SKB_EGRESS_PROGRAM)?;
        links.skb = Some(
            skb.attach(dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {SKB_EGRESS_PROGRAM} to cgroup {path}"))?,
        );
        Ok(())
    }

    /// Pins `links` under `dir` (on bpffs, created here), so that the cgroup stays redirected
    /// if this process dies. On failure every link of `links` is detached.
    pub fn pin(&mut self, links: Links, dir: &std::path::Path) -> anyhow::Result<PinnedLinks> {
        let Links {
            cgroup_id,
            sock_addr,
            ops,
            release,
            skb,
        } = links;
        // Take every link out of aya's bookkeeping first: from here on dropping one detaches it.
        let mut taken: Vec<(&str, anyhow::Result<FdLink>)> = Vec::new();
        for (name, id) in sock_addr {
            let link = program::<CgroupSockAddr>(&mut self.ebpf, name)
                .and_then(|p| Ok(p.take_link(id)?))
                .and_then(|l| Ok(FdLink::try_from(l)?));
            taken.push((name, link));
        }
        if let Some(id) = ops {
            let link = program::<SockOps>(&mut self.ebpf, SOCK_OPS_PROGRAM)
                .and_then(|p| Ok(p.take_link(id)?))
                .and_then(|l| Ok(FdLink::try_from(l)?));
            taken.push((SOCK_OPS_PROGRAM, link));
        }
        if let Some(id) = release {
            let link = program::<CgroupSock>(&mut self.ebpf, SOCK_RELEASE_PROGRAM)
                .and_then(|p| Ok(p.take_link(id)?))
                .and_then(|l| Ok(FdLink::try_from(l)?));
            taken.push((SOCK_RELEASE_PROGRAM, link));
        }
        if let Some(id) = skb {
            let link = program::<CgroupSkb>(&mut self.ebpf, SKB_EGRESS_PROGRAM)
                .and_then(|p| Ok(p.take_link(id)?))
                .and_then(|l| Ok(FdLink::try_from(l)?));
            taken.push((SKB_EGRESS_PROGRAM, link));
        }
        let mut pinned = PinnedLinks {
            cgroup_id,
            dir: dir.to_path_buf(),
            links: Vec::new(),
        };
        let result = std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {}", dir.display()))
            .and_then(|()| {
                for (name, link) in taken {
                    let link = link.with_context(|| {
                        format!("taking the link of {name} (pinning needs kernel 5.7+ BPF links)")
                    })?;
                    let path = dir.join(name);
                    pinned.links.push(
                        link.pin(&path)
                            .with_context(|| format!("pinning {}", path.display()))?,
                    );
                }
                Ok(())
            });
        match result {
            Ok(()) => Ok(pinned),
            Err(e) => {
                self.release(pinned);
                Err(e)
            }
        }
    }

    /// Unpins and detaches pinned links and forgets the cgroup's settings.
    pub fn release(&mut self, pinned: PinnedLinks) {
        for link in pinned.links {
            // Unpinned and dropped: the last reference goes, the program is detached.
            if let Err(e) = link.unpin() {
                tracing::warn!("unpinning a link in {}: {e}", pinned.dir.display());
            }
        }
        let _ = std::fs::remove_dir(&pinned.dir);
        if let Err(e) = self.sandboxes.remove(&pinned.cgroup_id) {
            tracing::debug!(
                "removing cgroup {} from the SANDBOXES map: {e}",
                pinned.cgroup_id
            );
        }
    }

    /// Detaches the programs `links` attached and forgets the cgroup's settings. Errors are
    /// logged, not returned: detaching is cleanup, and each program is tried.
    pub fn detach(&mut self, links: Links) {
        let Links {
            cgroup_id,
            sock_addr,
            ops,
            release,
            skb,
        } = links;
        for (name, id) in sock_addr {
            if let Err(e) =
                program::<CgroupSockAddr>(&mut self.ebpf, name).and_then(|p| Ok(p.detach(id)?))
            {
                tracing::warn!("detaching {name}: {e:#}");
            }
        }
        if let Some(id) = ops
            && let Err(e) =
                program::<SockOps>(&mut self.ebpf, SOCK_OPS_PROGRAM).and_then(|p| Ok(p.detach(id)?))
        {
            tracing::warn!("detaching {SOCK_OPS_PROGRAM}: {e:#}");
        }
        if let Some(id) = release
            && let Err(e) = program::<CgroupSock>(&mut self.ebpf, SOCK_RELEASE_PROGRAM)
                .and_then(|p| Ok(p.detach(id)?))
        {
            tracing::warn!("detaching {SOCK_RELEASE_PROGRAM}: {e:#}");
        }
        if let Some(id) = skb
            && let Err(e) = program::<CgroupSkb>(&mut self.ebpf, SKB_EGRESS_PROGRAM)
                .and_then(|p| Ok(p.detach(id)?))
        {
            tracing::warn!("detaching {SKB_EGRESS_PROGRAM}: {e:#}");
        }
        if let Err(e) = self.sandboxes.remove(&cgroup_id) {
            tracing::warn!("removing cgroup {cgroup_id} from the SANDBOXES map: {e}");
        }
    }

    /// How the proxy finds the destination a sandboxed client dialled.
    pub fn orig_dst(&self) -> Arc<dyn OrigDstLookup> {
        self.orig.clone()
    }

    /// Every program `attach` attaches, with its kernel id when it can be read (for the audit
    /// log's `arm` record).
    pub fn programs(&self) -> Vec<egressd_proxy::AttachedProgram> {
        SOCK_ADDR_PROGRAMS
            .iter()
            .copied()
            .chain([SOCK_OPS_PROGRAM, SOCK_RELEASE_PROGRAM, SKB_EGRESS_PROGRAM])
            .map(|name| egressd_proxy::AttachedProgram {
                name: name.to_owned(),
                id: self
                    .ebpf
                    .program(name)
                    .and_then(|p| p.info().ok())
                    .map(|info| info.id()),
            })
            .collect()
    }

    /// The kernel-side counters, summed over CPUs, as (name, value) for the non-zero ones.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        (0..counter::COUNT)
            .filter_map(|i| {
                let per_cpu = self.counters.get(&i, 0).ok()?;
                let total: u64 = per_cpu.iter().sum();
                (total > 0).then(|| (counter::NAMES[i as usize], total))
            })
            .collect()
    }
}

/// Unpins every link in `dir` (left by a daemon that died) and removes the directory: the
/// programs they kept attached are detached. Returns how many were unpinned.
pub fn unpin_dir(dir: &std::path::Path) -> anyhow::Result<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let link = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening the pinned link {}", path.display()))?;
        link.unpin()
            .with_context(|| format!("unpinning {}", path.display()))?;
        count += 1;
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(count)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the embedded eBPF object has no program {name}"))?;
    prog.try_into()
        .with_context(|| format!("eBPF program {name} has an unexpected type"))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("the embedded eBPF object has no map {name}"))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so loading works there.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised rlimit struct.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if ret != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// `OrigDstLookup` over the `ORIG_BY_CLIENT` map. Each entry is read once and removed.
struct MapOrigDst {
    // A lookup is two map syscalls per accepted connection; the lock is never held across
    // anything else.
    map: Mutex<HashMap<MapData, ClientKey, OrigDst>>,
}

impl OrigDstLookup for MapOrigDst {
    fn lookup(
        &self,
        accepted: BorrowedFd<'_>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<SocketAddr> {
        let key = ClientKey {
            netns_cookie: netns_cookie(accepted).ok()?,
            addr: ip_words(peer.ip()),
            port: peer.port().to_be(),
            proxy_port: local.port().to_be(),
            _pad: 0,
        };
        let mut map = self.map.lock().ok()?;
        let orig = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(orig_addr(&orig))
    }
}

/// The cookie of the network namespace `fd`'s socket lives in (`SO_NETNS_COOKIE`).
fn netns_cookie(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes passed.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if ret == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// An address as the kernel programs store it: 16 bytes in network order, IPv4 mapped.
fn ip_words(ip: IpAddr) -> [u32; 4] {
    let octets = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    std::array::from_fn(|i| {
        u32::from_ne_bytes([
            octets[4 * i],
            octets[4 * i + 1],
            octets[4 * i + 2],
            octets[4 * i + 3],
        ])
    })
}

/// The socket address an `OrigDst` records (IPv4-mapped addresses become IPv4).
fn orig_addr(orig: &OrigDst) -> SocketAddr {
    let mut octets = [0u8; 16];
    for (i, word) in orig.addr.iter().enumerate() {
        octets[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(octets);
    let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
    SocketAddr::new(ip, u16::from_be(orig.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_round_trips_through_the_mapped_form() {
        let addr: SocketAddr = "192.0.2.7:443".parse().unwrap();
        let orig = OrigDst {
            addr: ip_words(addr.ip()),
            port: addr.port().to_be(),
            family: 2,
            proxy_port: 0,
            _pad: 0,
            pid: 0,
        };
        assert_eq!(orig.addr[2], egressd_ebpf_common::V4_MAPPED_WORD);
        assert_eq!(orig_addr(&orig), addr);
    }

    #[test]
    fn ipv6_round_trips() {
        let addr: SocketAddr = "[2001:db8::7]:8443".parse().unwrap();
        let orig = OrigDst {
            addr: ip_words(addr.ip()),
            port: addr.port().to_be(),
            family: 10,
            proxy_port: 0,
            _pad: 0,
            pid: 0,
        };
        assert_eq!(orig_addr(&orig), addr);
    }
}
