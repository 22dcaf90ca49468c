//! Loads the embedded kernel programs once and attaches them to sandbox cgroups (aya).
//!
//! Everything that can fail here fails before the sandboxed command starts: `exec`
//! refuses to run anything unless every program is attached (fail closed).
//!
//! The Unix-socket hooks (`cgroup/connect_unix`, `cgroup/sendmsg_unix`, Linux 6.7+) are the
//! exception in two ways. They are optional: when the kernel cannot load them the other
//! programs still load and attach, and [`Loader::unix_hooks`] says why they are missing.
//! And aya 0.14 knows neither their section names nor their attach types, so egressd loads
//! and attaches them itself (see [`unix_hooks`]): aya is handed a copy of the object in
//! which those two sections are marked non-executable (its parser then skips them), and the
//! two programs are read from the object, their map references resolved to the maps aya
//! created, and loaded with `BPF_PROG_LOAD` and attached with `BPF_LINK_CREATE` directly.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    path::{Component, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, RingBuf, lpm_trie::LpmTrie},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, SockOps,
        cgroup_skb::CgroupSkbLinkId,
        cgroup_sock::CgroupSockLinkId,
        cgroup_sock_addr::CgroupSockAddrLinkId,
        links::{FdLink, PinnedLink},
        sock_ops::SockOpsLinkId,
    },
};
use egressd_ebpf_common::{
    ClientKey, OrigDst, SandboxConfig, UNIX_KIND_CONNECT, UNIX_KIND_SENDMSG, UNIX_PATH_MAX,
    UnixAllowData, UnixEvent, counter,
};
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

/// The Unix-socket hooks, which egressd loads itself: program name (= ELF symbol), ELF
/// section, kernel attach type, and the name the kernel shows (at most 15 bytes).
const UNIX_PROGRAMS: [unix_hooks::Program; 2] = [
    unix_hooks::Program {
        name: "egressd_connect_unix",
        section: "cgroup/connect_unix",
        attach_type: unix_hooks::BPF_CGROUP_UNIX_CONNECT,
        kernel_name: "eg_connect_unix",
    },
    unix_hooks::Program {
        name: "egressd_sendmsg_unix",
        section: "cgroup/sendmsg_unix",
        attach_type: unix_hooks::BPF_CGROUP_UNIX_SENDMSG,
        kernel_name: "eg_sendmsg_unix",
    },
];

/// The programs attached to one cgroup, for [`Loader::detach`].
#[derive(Debug)]
#[must_use = "dropping the links keeps the programs attached until the loader is dropped"]
pub struct Links {
    cgroup_id: u64,
    sock_addr: Vec<(&'static str, CgroupSockAddrLinkId)>,
    ops: Option<SockOpsLinkId>,
    release: Option<CgroupSockLinkId>,
    skb: Option<CgroupSkbLinkId>,
    /// Keys into `Loader::unix_links` (the loader owns the link fds, as aya owns the others).
    unix: Vec<(&'static str, u64)>,
}

/// A Unix-socket address a sandbox may connect or send to ([`Loader::set_unix_allow`]).
/// Paths are absolute; `.` components and repeated slashes are dropped, `..` is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnixAllow {
    /// Exactly this socket path.
    Socket(PathBuf),
    /// Every socket path below this directory.
    Dir(PathBuf),
}

impl UnixAllow {
    /// The `UNIX_ALLOW` key for this entry in cgroup `cgroup_id`.
    fn key(&self, cgroup_id: u64) -> anyhow::Result<aya::maps::lpm_trie::Key<UnixAllowData>> {
        use std::os::unix::ffi::OsStrExt as _;
        let (path, dir) = match self {
            Self::Socket(p) => (p, false),
            Self::Dir(p) => (p, true),
        };
        if !path.is_absolute() {
            anyhow::bail!("Unix-socket allow entry {} is not absolute", path.display());
        }
        let mut bytes = Vec::with_capacity(UNIX_PATH_MAX);
        for component in path.components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => {
                    bytes.push(b'/');
                    bytes.extend_from_slice(name.as_bytes());
                }
                Component::ParentDir | Component::Prefix(_) => anyhow::bail!(
                    "Unix-socket allow entry {} has a `..` component (such paths are always \
                     refused)",
                    path.display()
                ),
            }
        }
        if bytes.contains(&0) {
            anyhow::bail!("Unix-socket allow entry {} has a NUL byte", path.display());
        }
        if dir {
            // The directory itself and everything below it, not `/tmpfoo` for `/tmp`.
            bytes.push(b'/');
            if bytes == b"//" {
                bytes.pop();
            }
        } else {
            if bytes.is_empty() {
                anyhow::bail!("Unix-socket allow entry `/` is a directory, not a socket");
            }
            // The NUL makes the entry match this path only, not longer ones.
            bytes.push(0);
        }
        if bytes.len() > UNIX_PATH_MAX {
            anyhow::bail!(
                "Unix-socket allow entry {} is longer than a socket path can be ({} bytes)",
                path.display(),
                UNIX_PATH_MAX - 1
            );
        }
        let mut data = UnixAllowData {
            cgroup_id: cgroup_id.to_ne_bytes(),
            path: [0; UNIX_PATH_MAX],
        };
        data.path[..bytes.len()].copy_from_slice(&bytes);
        Ok(aya::maps::lpm_trie::Key::new(
            UnixAllowData::prefix_bits(bytes.len()),
            data,
        ))
    }
}

/// What a refused Unix-socket call was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnixEventKind {
    /// `connect()`.
    Connect,
    /// `sendmsg()`/`sendto()` naming an address.
    Sendmsg,
    /// A number this daemon does not know.
    Other(u32),
}

impl std::fmt::Display for UnixEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect => f.write_str("connect"),
            Self::Sendmsg => f.write_str("sendmsg"),
            Self::Other(n) => write!(f, "unix-hook-{n}"),
        }
    }
}

/// A Unix-socket connect or sendmsg the kernel programs refused ([`UnixEvents`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixSocketEvent {
    /// Cgroup id of the caller.
    pub cgroup_id: u64,
    /// Its process id (thread-group id).
    pub pid: u32,
    /// Which call.
    pub kind: UnixEventKind,
    /// The address: a path (lossy UTF-8), or `@name` for an abstract address (NUL bytes
    /// inside the name shown as `@`, as `ss` does; `@` alone for an unnamed one).
    pub path: String,
    /// Whether the address was abstract (or unnamed).
    pub is_abstract: bool,
}

impl UnixSocketEvent {
    /// Decodes one `UNIX_EVENTS` record; `None` when it is too short.
    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<UnixEvent>() {
            return None;
        }
        // SAFETY: `bytes` holds at least `size_of::<UnixEvent>()` bytes, and `UnixEvent` is
        // plain integers, valid for any bit pattern; read_unaligned needs no alignment.
        let raw: UnixEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let len = (raw.path_len as usize).min(UNIX_PATH_MAX);
        let bytes = &raw.path[..len];
        let is_abstract = raw.is_abstract != 0;
        let path = if is_abstract {
            let name: Vec<u8> = bytes
                .iter()
                .skip(1)
                .map(|&b| if b == 0 { b'@' } else { b })
                .collect();
            format!("@{}", String::from_utf8_lossy(&name))
        } else {
            // The kernel ends a pathname at its first NUL.
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        };
        Some(Self {
            cgroup_id: raw.cgroup_id,
            pid: raw.pid,
            kind: match raw.kind {
                UNIX_KIND_CONNECT => UnixEventKind::Connect,
                UNIX_KIND_SENDMSG => UnixEventKind::Sendmsg,
                other => UnixEventKind::Other(other),
            },
            path,
            is_abstract,
        })
    }
}

/// The refused Unix-socket calls, read from the kernel's `UNIX_EVENTS` ring buffer
/// ([`Loader::unix_events`]). A full buffer drops events; the calls are refused anyway and
/// counted in the `unix_denied`/`unix_abstract_denied` counters.
pub struct UnixEvents {
    ring: tokio::io::unix::AsyncFd<RingBuf<MapData>>,
}

impl UnixEvents {
    /// The next refusal, waiting for one (cancel-safe: drop the future to stop waiting).
    pub async fn next(&mut self) -> std::io::Result<UnixSocketEvent> {
        loop {
            if let Some(event) = self.try_next() {
                return Ok(event);
            }
            let mut guard = self.ring.readable_mut().await?;
            // Cleared before looking again, so an event that arrives in between wakes the
            // next wait rather than being missed.
            guard.clear_ready();
        }
    }

    /// The next refusal already in the buffer, without waiting.
    pub fn try_next(&mut self) -> Option<UnixSocketEvent> {
        let ring = self.ring.get_mut();
        loop {
            let item = ring.next()?;
            if let Some(event) = UnixSocketEvent::decode(&item) {
                return Some(event);
            }
            tracing::debug!("skipping a short UNIX_EVENTS record ({} bytes)", item.len());
        }
    }
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
    /// The Unix-socket hooks, loaded; or why not.
    unix: Result<Vec<unix_hooks::Loaded>, String>,
    /// Attached Unix-socket hook links by key (`Links::unix`); dropping one detaches it.
    unix_links: std::collections::HashMap<u64, OwnedFd>,
    next_unix_link: u64,
    unix_allow: LpmTrie<MapData, UnixAllowData, u32>,
    /// `UNIX_EVENTS`, until [`Loader::unix_events`] takes it.
    unix_events: Option<aya::maps::Map>,
}

impl Loader {
    /// Loads the programs into the kernel (verifier included); attaches nothing yet.
    pub fn load() -> anyhow::Result<Self> {
        raise_memlock_limit();
        // aya's parser rejects the whole object over sections it does not know: hand it a
        // copy in which the Unix-socket hook sections are not executable, so it skips them.
        let sections = UNIX_PROGRAMS.map(|p| p.section);
        let (object, hidden) = match unix_hooks::hide_sections(EBPF_OBJECT, &sections) {
            Ok(copy) => (Some(copy), Ok(())),
            Err(e) => (None, Err(format!("reading the embedded eBPF object: {e}"))),
        };
        let bytes = object.as_ref().map_or(EBPF_OBJECT, |o| o.bytes());
        let mut ebpf = Ebpf::load(bytes).context(
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

        // Before the maps are taken out of `ebpf`: the programs' map references need them.
        let unix = hidden.and_then(|()| unix_hooks::load(EBPF_OBJECT, &ebpf, &UNIX_PROGRAMS));
        if let Err(why) = &unix {
            tracing::debug!("Unix-socket hooks not available: {why}");
        }

        let sandboxes = HashMap::try_from(take_map(&mut ebpf, "SANDBOXES")?)?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, "COUNTERS")?)?;
        let by_client = HashMap::try_from(take_map(&mut ebpf, "ORIG_BY_CLIENT")?)?;
        let unix_allow = LpmTrie::try_from(take_map(&mut ebpf, "UNIX_ALLOW")?)?;
        let unix_events = Some(take_map(&mut ebpf, "UNIX_EVENTS")?);
        Ok(Self {
            ebpf,
            sandboxes,
            counters,
            orig: Arc::new(MapOrigDst {
                map: Mutex::new(by_client),
            }),
            unix,
            unix_links: std::collections::HashMap::new(),
            next_unix_link: 0,
            unix_allow,
            unix_events,
        })
    }

    /// Whether the Unix-socket hooks loaded (and so [`Loader::attach`] attaches them); the
    /// error says why not (kernel older than 6.7, an unexpected kernel layout, ...).
    pub fn unix_hooks(&self) -> Result<(), String> {
        self.unix.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// Sets the Unix-socket paths cgroup `cgroup_id` may connect/send to (with
    /// `FLAG_UNIX_RULES` in its settings), replacing what was set before. New entries go in
    /// before old ones go out, so nothing allowed in both is refused in between. Nothing is
    /// changed when an entry is invalid; on a map error (the trie holds `MAX_UNIX_ALLOW`
    /// entries over all sandboxes) the entries written so far stay.
    pub fn set_unix_allow(&mut self, cgroup_id: u64, entries: &[UnixAllow]) -> anyhow::Result<()> {
        let keys = entries
            .iter()
            .map(|e| e.key(cgroup_id))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let old = self.unix_allow_keys(cgroup_id)?;
        for key in &keys {
            self.unix_allow
                .insert(key, 1, 0)
                .context("adding an entry to the UNIX_ALLOW map")?;
        }
        let same = |a: &aya::maps::lpm_trie::Key<UnixAllowData>,
                    b: &aya::maps::lpm_trie::Key<UnixAllowData>| {
            a.prefix_len() == b.prefix_len() && a.data() == b.data()
        };
        for key in old {
            if !keys.iter().any(|k| same(k, &key)) {
                self.unix_allow
                    .remove(&key)
                    .context("removing an entry from the UNIX_ALLOW map")?;
            }
        }
        Ok(())
    }

    /// The `UNIX_ALLOW` keys of cgroup `cgroup_id`.
    fn unix_allow_keys(
        &self,
        cgroup_id: u64,
    ) -> anyhow::Result<Vec<aya::maps::lpm_trie::Key<UnixAllowData>>> {
        let id = cgroup_id.to_ne_bytes();
        let mut keys = Vec::new();
        for key in self.unix_allow.keys() {
            let key = key.context("listing the UNIX_ALLOW map")?;
            if key.data().cgroup_id == id {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Forgets cgroup `cgroup_id`'s Unix-socket allow entries (logged, not returned).
    fn forget_unix_allow(&mut self, cgroup_id: u64) {
        let keys = match self.unix_allow_keys(cgroup_id) {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!("{e:#}");
                return;
            }
        };
        for key in keys {
            if let Err(e) = self.unix_allow.remove(&key) {
                tracing::warn!("removing a UNIX_ALLOW entry of cgroup {cgroup_id}: {e}");
            }
        }
    }

    /// The refusals of the Unix-socket hooks, to read asynchronously. Call it inside a tokio
    /// runtime (the ring buffer is registered with its reactor); it can be taken once.
    pub fn unix_events(&mut self) -> anyhow::Result<UnixEvents> {
        let map = self
            .unix_events
            .take()
            .ok_or_else(|| anyhow!("the UNIX_EVENTS ring buffer was already taken"))?;
        let ring = RingBuf::try_from(map).context("opening the UNIX_EVENTS ring buffer")?;
        // SAFETY: the ring buffer owns its map descriptor (MapData holds it) and always
        // returns that one from as_raw_fd, until the AsyncFd that owns it is dropped.
        let ring = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)
        .context("registering the UNIX_EVENTS ring buffer with tokio")?;
        Ok(UnixEvents { ring })
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
            unix: Vec::new(),
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
        if let Ok(loaded) = &self.unix {
            for prog in loaded {
                let link = unix_hooks::link_create(prog, dir.as_fd())
                    .with_context(|| format!("attaching {} to cgroup {path}", prog.name()))?;
                let key = self.next_unix_link;
                self.next_unix_link += 1;
                self.unix_links.insert(key, link);
                links.unix.push((prog.name(), key));
            }
        }
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
            unix,
        } = links;
        // The Unix-socket hook links: taken out of the loader too (dropping one detaches it).
        let unix_taken: Vec<(&str, Option<OwnedFd>)> = unix
            .into_iter()
            .map(|(name, key)| (name, self.unix_links.remove(&key)))
            .collect();
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
                for (name, fd) in unix_taken {
                    let fd = fd.ok_or_else(|| anyhow!("the link of {name} is not the loader's"))?;
                    let path = dir.join(name);
                    unix_hooks::obj_pin(fd.as_fd(), &path)
                        .with_context(|| format!("pinning {}", path.display()))?;
                    // Opened again through aya, so that `release` unpins it like the others.
                    pinned.links.push(
                        PinnedLink::from_pin(&path).with_context(|| {
                            format!("opening the pinned link {}", path.display())
                        })?,
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
        self.forget_unix_allow(pinned.cgroup_id);
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
            unix,
        } = links;
        for (name, key) in unix {
            // Closing the last descriptor of a BPF link detaches it.
            if self.unix_links.remove(&key).is_none() {
                tracing::warn!("detaching {name}: the loader has no such link");
            }
        }
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
        self.forget_unix_allow(cgroup_id);
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
        let unix = self.unix.as_ref().map(Vec::as_slice).unwrap_or_default();
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
            .chain(unix.iter().map(|p| egressd_proxy::AttachedProgram {
                name: p.name().to_owned(),
                id: p.id(),
            }))
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

/// Loading and attaching the Unix-socket hooks without aya (which does not know them).
///
/// Three small pieces: an ELF64 reader for the two program sections and their map
/// relocations, a check of `struct bpf_sock_addr_kern` in the kernel's BTF, and the
/// `bpf()` commands (`BPF_PROG_LOAD`, `BPF_LINK_CREATE`, `BPF_OBJ_PIN`,
/// `BPF_OBJ_GET_INFO_BY_FD`).
mod unix_hooks {
    use std::{
        ffi::CString,
        os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        path::Path,
    };

    use egressd_ebpf_common::sock_addr_kern;

    /// `BPF_CGROUP_UNIX_CONNECT` in `enum bpf_attach_type` (Linux 6.7).
    pub const BPF_CGROUP_UNIX_CONNECT: u32 = 49;
    /// `BPF_CGROUP_UNIX_SENDMSG`.
    pub const BPF_CGROUP_UNIX_SENDMSG: u32 = 50;
    const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_CREATE: libc::c_long = 28;
    /// `src_reg` of a 64-bit immediate load that holds a map fd.
    const BPF_PSEUDO_MAP_FD: u8 = 1;
    /// The kernel's BTF.
    const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

    /// One Unix-socket hook in the object.
    #[derive(Clone, Copy, Debug)]
    pub struct Program {
        pub name: &'static str,
        pub section: &'static str,
        pub attach_type: u32,
        pub kernel_name: &'static str,
    }

    /// A hook loaded into the kernel.
    #[derive(Debug)]
    pub struct Loaded {
        program: Program,
        fd: OwnedFd,
        id: Option<u32>,
    }

    impl Loaded {
        pub fn name(&self) -> &'static str {
            self.program.name
        }

        pub fn id(&self) -> Option<u32> {
            self.id
        }
    }

    /// A copy of an object, 8-byte aligned as aya's ELF parser needs.
    pub struct AlignedObject {
        words: Vec<u64>,
        len: usize,
    }

    impl AlignedObject {
        pub fn bytes(&self) -> &[u8] {
            // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment.
            unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
        }

        fn bytes_mut(&mut self) -> &mut [u8] {
            // SAFETY: as above, and `self` is borrowed mutably.
            unsafe {
                std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len)
            }
        }
    }

    /// A copy of `object` in which `sections` are not executable (`SHF_EXECINSTR` cleared):
    /// aya then treats them as data it does not use.
    pub fn hide_sections(object: &[u8], sections: &[&str]) -> Result<AlignedObject, String> {
        let elf = Elf::parse(object)?;
        let mut headers = Vec::new();
        for name in sections {
            let (_, header) = elf
                .section(name)
                .ok_or_else(|| format!("the object has no section {name}"))?;
            headers.push(header.at);
        }
        let mut copy = AlignedObject {
            words: vec![0; object.len().div_ceil(8)],
            len: object.len(),
        };
        copy.bytes_mut().copy_from_slice(object);
        const SHF_EXECINSTR: u64 = 0x4;
        for at in headers {
            let flags_at = at + 8;
            let bytes = copy.bytes_mut();
            let flags = u64::from_le_bytes(bytes[flags_at..flags_at + 8].try_into().expect("8"));
            bytes[flags_at..flags_at + 8].copy_from_slice(&(flags & !SHF_EXECINSTR).to_le_bytes());
        }
        Ok(copy)
    }

    /// Loads `programs` from `object` (the original, unmodified one), their map references
    /// resolved to the maps aya created for `ebpf`. Fails, saying why, when the kernel's
    /// layout differs from what the programs read or the kernel refuses them.
    pub fn load(
        object: &[u8],
        ebpf: &aya::Ebpf,
        programs: &[Program],
    ) -> Result<Vec<Loaded>, String> {
        check_kernel_layout()?;
        let elf =
            Elf::parse(object).map_err(|e| format!("reading the embedded eBPF object: {e}"))?;
        let mut loaded = Vec::new();
        for program in programs {
            let (mut insns, relocations) = elf
                .program(program.section, program.name)
                .map_err(|e| format!("reading {} from the embedded object: {e}", program.name))?;
            for (at, map) in relocations {
                let fd = ebpf.map(&map).and_then(map_fd).ok_or_else(|| {
                    format!("{} uses map {map}, which aya did not create", program.name)
                })?;
                let insn = &mut insns[at..at + 16];
                if insn[0] != 0x18 {
                    return Err(format!(
                        "{}: a map relocation at instruction {} is not a 64-bit load",
                        program.name,
                        at / 8
                    ));
                }
                insn[1] = (insn[1] & 0x0f) | (BPF_PSEUDO_MAP_FD << 4);
                insn[4..8].copy_from_slice(&fd.as_raw_fd().to_le_bytes());
                insn[12..16].copy_from_slice(&0i32.to_le_bytes());
            }
            let fd = prog_load(program, &insns)?;
            let id = prog_id(fd.as_fd());
            loaded.push(Loaded {
                program: *program,
                fd,
                id,
            });
        }
        Ok(loaded)
    }

    /// The maps `program` references in `object` (for tests).
    #[cfg(test)]
    pub fn program_maps(object: &[u8], program: &Program) -> Result<Vec<String>, String> {
        let (_, relocations) = Elf::parse(object)?.program(program.section, program.name)?;
        Ok(relocations.into_iter().map(|(_, name)| name).collect())
    }

    fn map_fd(map: &aya::maps::Map) -> Option<BorrowedFd<'_>> {
        use aya::maps::Map;
        match map {
            Map::Array(m)
            | Map::HashMap(m)
            | Map::LpmTrie(m)
            | Map::LruHashMap(m)
            | Map::PerCpuArray(m)
            | Map::PerCpuHashMap(m)
            | Map::RingBuf(m) => Some(m.fd().as_fd()),
            _ => None,
        }
    }

    fn bpf(cmd: libc::c_long, attr: *mut u8, size: usize) -> std::io::Result<libc::c_long> {
        // SAFETY: `attr` points to `size` bytes of an initialised attribute block for `cmd`,
        // whose pointers (if any) are valid for the call.
        let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
        if ret < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// The head of `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`.
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }

    fn prog_load(program: &Program, insns: &[u8]) -> Result<OwnedFd, String> {
        let license = c"GPL";
        let mut name = [0u8; 16];
        let kernel_name = program.kernel_name.as_bytes();
        name[..kernel_name.len().min(15)]
            .copy_from_slice(&kernel_name[..kernel_name.len().min(15)]);
        let attempt = |log: Option<&mut Vec<u8>>| {
            let mut attr = ProgLoadAttr {
                prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                insn_cnt: (insns.len() / 8) as u32,
                insns: insns.as_ptr() as u64,
                license: license.as_ptr() as u64,
                prog_name: name,
                expected_attach_type: program.attach_type,
                ..Default::default()
            };
            if let Some(log) = log {
                attr.log_level = 1;
                attr.log_size = log.len() as u32;
                attr.log_buf = log.as_mut_ptr() as u64;
            }
            bpf(
                BPF_PROG_LOAD,
                (&raw mut attr).cast(),
                size_of::<ProgLoadAttr>(),
            )
        };
        match attempt(None) {
            // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
            Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
            Err(e) => {
                // Again with the verifier's log, to say why.
                let mut log = vec![0u8; 1 << 20];
                let _ = attempt(Some(&mut log));
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                let tail: Vec<&str> = text.lines().rev().take(8).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                let hint = if e.raw_os_error() == Some(libc::EINVAL) && tail.is_empty() {
                    " (the kernel does not know the attach type: cgroup Unix-socket hooks need \
                     Linux 6.7 or newer)"
                } else {
                    ""
                };
                let mut msg = format!("the kernel refused {}: {e}{hint}", program.name);
                if !tail.is_empty() {
                    msg.push_str("; verifier: ");
                    msg.push_str(&tail.join(" | "));
                }
                Err(msg)
            }
        }
    }

    /// The kernel's id of program `fd`.
    fn prog_id(fd: BorrowedFd<'_>) -> Option<u32> {
        // The first two fields of `struct bpf_prog_info`: type, id.
        let mut info = [0u32; 2];
        #[repr(C)]
        struct InfoAttr {
            bpf_fd: u32,
            info_len: u32,
            info: u64,
        }
        let mut attr = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: size_of_val(&info) as u32,
            info: info.as_mut_ptr() as u64,
        };
        bpf(
            BPF_OBJ_GET_INFO_BY_FD,
            (&raw mut attr).cast(),
            size_of::<InfoAttr>(),
        )
        .ok()?;
        Some(info[1])
    }

    /// Attaches `program` to the cgroup directory `cgroup` with a BPF link; closing the
    /// returned descriptor (unless the link is pinned) detaches it.
    pub fn link_create(program: &Loaded, cgroup: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
        #[repr(C)]
        struct LinkCreateAttr {
            prog_fd: u32,
            target_fd: u32,
            attach_type: u32,
            flags: u32,
        }
        let mut attr = LinkCreateAttr {
            prog_fd: program.fd.as_raw_fd() as u32,
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type: program.program.attach_type,
            flags: 0,
        };
        let fd = bpf(
            BPF_LINK_CREATE,
            (&raw mut attr).cast(),
            size_of::<LinkCreateAttr>(),
        )?;
        // SAFETY: BPF_LINK_CREATE returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Pins the BPF object `fd` (a link) at `path` on bpffs.
    pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt as _;
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        #[repr(C)]
        struct PinAttr {
            pathname: u64,
            bpf_fd: u32,
            file_flags: u32,
        }
        let mut attr = PinAttr {
            pathname: path.as_ptr() as u64,
            bpf_fd: fd.as_raw_fd() as u32,
            file_flags: 0,
        };
        bpf(BPF_OBJ_PIN, (&raw mut attr).cast(), size_of::<PinAttr>()).map(|_| ())
    }

    /// Checks the running kernel's `struct bpf_sock_addr_kern` against the offsets the
    /// programs read (`egressd_ebpf_common::sock_addr_kern`).
    fn check_kernel_layout() -> Result<(), String> {
        let btf = std::fs::read(VMLINUX_BTF).map_err(|e| {
            format!(
                "reading the kernel's BTF ({VMLINUX_BTF}: {e}), needed to check the layout \
                 of struct bpf_sock_addr_kern that the hooks read"
            )
        })?;
        check_sock_addr_kern(&btf)
    }

    /// Checks `struct bpf_sock_addr_kern` in the BTF blob `btf`: `uaddr` must be a pointer
    /// at `sock_addr_kern::UADDR` and `uaddrlen` a 4-byte integer at
    /// `sock_addr_kern::UADDRLEN`.
    pub fn check_sock_addr_kern(btf: &[u8]) -> Result<(), String> {
        let types = Btf::parse(btf)?;
        let id = types
            .find_struct("bpf_sock_addr_kern")?
            .ok_or("the kernel's BTF has no struct bpf_sock_addr_kern")?;
        let members = types.members(id)?;
        let member = |name: &str| {
            members
                .iter()
                .find(|m| m.0 == name)
                .copied()
                .ok_or_else(|| {
                    format!(
                        "struct bpf_sock_addr_kern has no member {name} (uaddrlen came with the \
                         cgroup Unix-socket hooks in Linux 6.7)"
                    )
                })
        };
        let (_, uaddr_bits, uaddr_type) = member("uaddr")?;
        let (_, len_bits, len_type) = member("uaddrlen")?;
        const BTF_KIND_INT: u32 = 1;
        const BTF_KIND_PTR: u32 = 2;
        let (uaddr_kind, _) = types.resolve(uaddr_type)?;
        let (len_kind, len_size) = types.resolve(len_type)?;
        if uaddr_bits != sock_addr_kern::UADDR as u32 * 8 || uaddr_kind != BTF_KIND_PTR {
            return Err(format!(
                "struct bpf_sock_addr_kern differs from what the Unix-socket hooks read: uaddr \
                 is at bit {uaddr_bits} (kind {uaddr_kind}), expected a pointer at byte {}",
                sock_addr_kern::UADDR
            ));
        }
        if len_bits != sock_addr_kern::UADDRLEN as u32 * 8
            || len_kind != BTF_KIND_INT
            || len_size != 4
        {
            return Err(format!(
                "struct bpf_sock_addr_kern differs from what the Unix-socket hooks read: \
                 uaddrlen is at bit {len_bits} (kind {len_kind}, {len_size} bytes), expected a \
                 4-byte integer at byte {}",
                sock_addr_kern::UADDRLEN
            ));
        }
        Ok(())
    }

    fn u16_at(data: &[u8], at: usize) -> Result<u16, String> {
        data.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("truncated at byte {at}"))
    }

    fn u32_at(data: &[u8], at: usize) -> Result<u32, String> {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| format!("truncated at byte {at}"))
    }

    fn u64_at(data: &[u8], at: usize) -> Result<u64, String> {
        data.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| format!("truncated at byte {at}"))
    }

    fn c_str(data: &[u8], at: usize) -> Result<&str, String> {
        let rest = data
            .get(at..)
            .ok_or_else(|| format!("string offset {at} out of range"))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| format!("unterminated string at {at}"))?;
        std::str::from_utf8(&rest[..end]).map_err(|_| format!("string at {at} is not UTF-8"))
    }

    /// The type section of a little-endian BTF blob, indexed by type id.
    struct Btf<'a> {
        types: &'a [u8],
        strings: &'a [u8],
        /// Offset in `types` of type id `i + 1`.
        offsets: Vec<usize>,
    }

    impl<'a> Btf<'a> {
        fn parse(data: &'a [u8]) -> Result<Self, String> {
            let e = |m: String| format!("the kernel's BTF: {m}");
            if u16_at(data, 0).map_err(e)? != 0xeb9f {
                return Err("the kernel's BTF: bad magic (not little-endian BTF)".into());
            }
            let hdr_len = u32_at(data, 4).map_err(e)? as usize;
            let type_off = u32_at(data, 8).map_err(e)? as usize;
            let type_len = u32_at(data, 12).map_err(e)? as usize;
            let str_off = u32_at(data, 16).map_err(e)? as usize;
            let str_len = u32_at(data, 20).map_err(e)? as usize;
            let section = |off: usize, len: usize| {
                data.get(hdr_len + off..hdr_len + off + len)
                    .ok_or_else(|| "the kernel's BTF: a section is out of range".to_string())
            };
            let types = section(type_off, type_len)?;
            let strings = section(str_off, str_len)?;
            let mut offsets = Vec::new();
            let mut at = 0;
            while at < types.len() {
                offsets.push(at);
                let info = u32_at(types, at + 4).map_err(e)?;
                let vlen = (info & 0xffff) as usize;
                let extra = match (info >> 24) & 0x1f {
                    1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                    2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF..FUNC, FLOAT, TYPE_TAG
                    3 => 12,                      // ARRAY
                    4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                    6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                    kind => return Err(e(format!("unknown type kind {kind}"))),
                };
                at += 12 + extra;
            }
            Ok(Self {
                types,
                strings,
                offsets,
            })
        }

        fn header(&self, id: u32) -> Result<(usize, u32, u32, u32), String> {
            let at = *id
                .checked_sub(1)
                .and_then(|i| self.offsets.get(i as usize))
                .ok_or_else(|| format!("the kernel's BTF: no type {id}"))?;
            Ok((
                at,
                u32_at(self.types, at)?,
                u32_at(self.types, at + 4)?,
                u32_at(self.types, at + 8)?,
            ))
        }

        fn find_struct(&self, name: &str) -> Result<Option<u32>, String> {
            for id in 1..=self.offsets.len() as u32 {
                let (_, name_off, info, _) = self.header(id)?;
                if (info >> 24) & 0x1f == 4 && c_str(self.strings, name_off as usize)? == name {
                    return Ok(Some(id));
                }
            }
            Ok(None)
        }

        /// (name, bit offset, type id) of each member of struct `id`.
        fn members(&self, id: u32) -> Result<Vec<(&'a str, u32, u32)>, String> {
            let (at, _, info, _) = self.header(id)?;
            let bitfields = info >> 31 == 1;
            let mut members = Vec::new();
            for i in 0..(info & 0xffff) as usize {
                let m = at + 12 + 12 * i;
                let name = c_str(self.strings, u32_at(self.types, m)? as usize)?;
                let offset = u32_at(self.types, m + 8)?;
                let bits = if bitfields {
                    offset & 0x00ff_ffff
                } else {
                    offset
                };
                members.push((name, bits, u32_at(self.types, m + 4)?));
            }
            Ok(members)
        }

        /// The kind and size of type `id` once typedefs and qualifiers are seen through.
        fn resolve(&self, mut id: u32) -> Result<(u32, u32), String> {
            for _ in 0..32 {
                let (_, _, info, size_or_type) = self.header(id)?;
                match (info >> 24) & 0x1f {
                    // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG
                    8..=11 | 18 => id = size_or_type,
                    kind => return Ok((kind, size_or_type)),
                }
            }
            Err(format!("the kernel's BTF: type {id} does not resolve"))
        }
    }

    /// A map a program references: (byte offset of the 64-bit load, map name).
    type MapReference = (usize, String);

    /// What is needed of a section header.
    #[derive(Clone, Copy)]
    struct Section {
        /// Where the header is in the file.
        at: usize,
        name: u32,
        kind: u32,
        offset: usize,
        size: usize,
        link: u32,
        info: u32,
    }

    /// A little-endian ELF64 eBPF object.
    struct Elf<'a> {
        data: &'a [u8],
        sections: Vec<Section>,
        names: Section,
    }

    impl<'a> Elf<'a> {
        fn parse(data: &'a [u8]) -> Result<Self, String> {
            const EM_BPF: u16 = 247;
            if data.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
                return Err("not a little-endian ELF64 file".into());
            }
            if u16_at(data, 18)? != EM_BPF {
                return Err("not an eBPF object".into());
            }
            let shoff = u64_at(data, 0x28)? as usize;
            let shentsize = u16_at(data, 0x3a)? as usize;
            let shnum = u16_at(data, 0x3c)? as usize;
            let shstrndx = u16_at(data, 0x3e)? as usize;
            if shentsize < 64 {
                return Err(format!("section headers of {shentsize} bytes"));
            }
            let mut sections = Vec::with_capacity(shnum);
            for i in 0..shnum {
                let at = shoff + i * shentsize;
                let section = Section {
                    at,
                    name: u32_at(data, at)?,
                    kind: u32_at(data, at + 4)?,
                    offset: u64_at(data, at + 24)? as usize,
                    size: u64_at(data, at + 32)? as usize,
                    link: u32_at(data, at + 40)?,
                    info: u32_at(data, at + 44)?,
                };
                if section.kind != 8 /* SHT_NOBITS */ && data.get(section.offset..section.offset + section.size).is_none()
                {
                    return Err(format!("section {i} is out of range"));
                }
                sections.push(section);
            }
            let names = *sections.get(shstrndx).ok_or("no section-name table")?;
            Ok(Self {
                data,
                sections,
                names,
            })
        }

        fn bytes(&self, section: &Section) -> &'a [u8] {
            &self.data[section.offset..section.offset + section.size]
        }

        fn name(&self, section: &Section) -> Result<&'a str, String> {
            c_str(self.bytes(&self.names), section.name as usize)
        }

        fn section(&self, name: &str) -> Option<(usize, Section)> {
            self.sections
                .iter()
                .enumerate()
                .find(|(_, s)| self.name(s).is_ok_and(|n| n == name))
                .map(|(i, s)| (i, *s))
        }

        /// The instructions of `function`, alone in `section`, and its map references as
        /// (byte offset of the instruction, map name). Anything else that needs linking
        /// (a call into `.text`, global data) is an error: the hooks are built without.
        fn program(
            &self,
            section: &str,
            function: &str,
        ) -> Result<(Vec<u8>, Vec<MapReference>), String> {
            const SHT_SYMTAB: u32 = 2;
            const SHT_REL: u32 = 9;
            const R_BPF_64_64: u32 = 1;
            let (index, code) = self
                .section(section)
                .ok_or_else(|| format!("no section {section}"))?;
            let symtab = *self
                .sections
                .iter()
                .find(|s| s.kind == SHT_SYMTAB)
                .ok_or("no symbol table")?;
            let strtab = *self
                .sections
                .get(symtab.link as usize)
                .ok_or("no symbol string table")?;
            let symbols = self.bytes(&symtab);
            let symbol = |i: usize| -> Result<(&'a str, u16, u64, u64), String> {
                let at = i * 24;
                let name = c_str(self.bytes(&strtab), u32_at(symbols, at)? as usize)?;
                Ok((
                    name,
                    u16_at(symbols, at + 6)?,
                    u64_at(symbols, at + 8)?,
                    u64_at(symbols, at + 16)?,
                ))
            };
            // The function must be the whole section.
            let found = (0..symbols.len() / 24)
                .map(symbol)
                .filter_map(Result::ok)
                .find(|(name, ..)| *name == function);
            match found {
                Some((_, shndx, 0, size))
                    if shndx as usize == index && size as usize == code.size => {}
                Some(_) => return Err(format!("{function} is not alone in section {section}")),
                None => return Err(format!("no symbol {function}")),
            }
            let maps = self.section("maps").map(|(i, _)| i);
            let mut relocations = Vec::new();
            for rel in self
                .sections
                .iter()
                .filter(|s| s.kind == SHT_REL && s.info as usize == index)
            {
                let rels = self.bytes(rel);
                for r in 0..rels.len() / 16 {
                    let offset = u64_at(rels, r * 16)? as usize;
                    let info = u64_at(rels, r * 16 + 8)?;
                    let (name, shndx, ..) = symbol((info >> 32) as usize)?;
                    if info as u32 != R_BPF_64_64 || Some(shndx as usize) != maps {
                        return Err(format!(
                            "relocation to {name} (type {}) at byte {offset}: only map references \
                             are supported (is a function not inlined?)",
                            info as u32
                        ));
                    }
                    if !offset.is_multiple_of(8) || offset + 16 > code.size {
                        return Err(format!("relocation at byte {offset} is out of range"));
                    }
                    relocations.push((offset, name.to_owned()));
                }
            }
            Ok((self.bytes(&code).to_vec(), relocations))
        }
    }
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

/// The Unix-socket hooks: object, kernel layout, key encoding, event decoding, and (as root)
/// the hooks themselves against real sockets.
#[cfg(test)]
mod unix_tests {
    use std::{
        ffi::CString,
        os::unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr as UnixAddr, UnixDatagram, UnixListener, UnixStream},
            process::CommandExt as _,
        },
        path::Path,
        process::Command,
        time::Duration,
    };

    use egressd_ebpf_common::{FLAG_UNIX_ABSTRACT_ALLOW, FLAG_UNIX_RULES};
    use std::os::linux::net::SocketAddrExt as _;

    use super::*;

    #[test]
    fn the_embedded_hooks_are_self_contained() {
        // Every reference in the two sections must be to a map: egressd links nothing else.
        let elf = unix_hooks::hide_sections(EBPF_OBJECT, &UNIX_PROGRAMS.map(|p| p.section))
            .expect("the object has the Unix-socket sections");
        assert_eq!(elf.bytes().len(), EBPF_OBJECT.len());
        for program in UNIX_PROGRAMS {
            let maps = unix_hooks::program_maps(EBPF_OBJECT, &program).expect(program.name);
            for map in ["SANDBOXES", "UNIX_ALLOW", "UNIX_EVENTS", "COUNTERS"] {
                assert!(maps.iter().any(|m| m == map), "{}: {maps:?}", program.name);
            }
        }
        // aya's parser accepts the copy in which they are hidden.
        let obj = aya::Ebpf::load(elf.bytes());
        // Loading needs root; the parse error (if any) would come first and not be EPERM.
        if let Err(e) = obj {
            let text = format!("{e:?}");
            assert!(!text.contains("InvalidProgramSection"), "{text}");
        }
    }

    #[test]
    fn the_running_kernel_has_the_layout_the_hooks_read() {
        let Ok(btf) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            eprintln!("skipping: no /sys/kernel/btf/vmlinux");
            return;
        };
        match unix_hooks::check_sock_addr_kern(&btf) {
            Ok(()) => {}
            Err(e) if !kernel_at_least(6, 7) => eprintln!("kernel before 6.7: {e}"),
            Err(e) => panic!("{e}"),
        }
        assert!(unix_hooks::check_sock_addr_kern(&btf[..100]).is_err());
    }

    /// A BTF blob with `u32` (a typedef of a 4-byte int), `void *`, and
    /// `struct bpf_sock_addr_kern { void *uaddr; u32 uaddrlen; }` at the given bit offsets.
    fn btf_blob(uaddr_bits: u32, uaddrlen_bits: u32) -> Vec<u8> {
        let strings = b"\0unsigned int\0bpf_sock_addr_kern\0uaddr\0uaddrlen\0u32\0";
        let name = |s: &str| {
            let needle = [b"\0", s.as_bytes(), b"\0"].concat();
            (strings
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap()
                + 1) as u32
        };
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        let mut types: Vec<u32> = Vec::new();
        // 1: INT "unsigned int", 4 bytes, 32 bits.
        types.extend([name("unsigned int"), info(1, 0), 4, 32]);
        // 2: PTR to void.
        types.extend([0, info(2, 0), 0]);
        // 3: TYPEDEF u32 -> 1.
        types.extend([name("u32"), info(8, 0), 1]);
        // 4: STRUCT bpf_sock_addr_kern, 40 bytes, two members.
        types.extend([name("bpf_sock_addr_kern"), info(4, 2), 40]);
        types.extend([name("uaddr"), 2, uaddr_bits]);
        types.extend([name("uaddrlen"), 3, uaddrlen_bits]);
        let types: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut blob = Vec::new();
        blob.extend(0xeb9f_u16.to_le_bytes());
        blob.extend([1, 0]);
        for word in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend(word.to_le_bytes());
        }
        blob.extend(types);
        blob.extend(strings);
        blob
    }

    #[test]
    fn a_different_kernel_layout_is_refused() {
        assert_eq!(unix_hooks::check_sock_addr_kern(&btf_blob(64, 256)), Ok(()));
        let moved = unix_hooks::check_sock_addr_kern(&btf_blob(64, 320)).unwrap_err();
        assert!(moved.contains("uaddrlen is at bit 320"), "{moved}");
        let moved = unix_hooks::check_sock_addr_kern(&btf_blob(0, 256)).unwrap_err();
        assert!(moved.contains("uaddr is at bit 0"), "{moved}");
    }

    fn key_path(entry: UnixAllow) -> (u32, Vec<u8>) {
        let key = entry.key(7).unwrap();
        let data = key.data();
        assert_eq!(data.cgroup_id, 7u64.to_ne_bytes());
        let bytes = (key.prefix_len() / 8 - 8) as usize;
        (key.prefix_len(), data.path[..bytes].to_vec())
    }

    #[test]
    fn allow_entries_become_prefixes() {
        assert_eq!(
            key_path(UnixAllow::Socket("/run/x.sock".into())),
            (8 * (8 + 12), b"/run/x.sock\0".to_vec())
        );
        assert_eq!(
            key_path(UnixAllow::Dir("/tmp".into())),
            (8 * (8 + 5), b"/tmp/".to_vec())
        );
        assert_eq!(
            key_path(UnixAllow::Dir("/tmp//a/./b/".into())),
            (8 * (8 + 9), b"/tmp/a/b/".to_vec())
        );
        assert_eq!(key_path(UnixAllow::Dir("/".into())).1, b"/".to_vec());
        for bad in [
            UnixAllow::Socket("run/x.sock".into()),
            UnixAllow::Socket("/run/../x.sock".into()),
            UnixAllow::Dir("/a/..".into()),
            UnixAllow::Socket("/".into()),
            UnixAllow::Socket(format!("/{}", "a".repeat(107)).into()),
        ] {
            assert!(bad.key(1).is_err(), "{bad:?}");
        }
        // 107 bytes and the NUL fill sun_path exactly.
        let longest = UnixAllow::Socket(format!("/{}", "a".repeat(106)).into());
        assert_eq!(
            longest.key(1).unwrap().prefix_len(),
            UnixAllowData::FULL_PREFIX_BITS
        );
    }

    fn record(kind: u32, is_abstract: bool, path: &[u8], len: u32) -> Vec<u8> {
        let mut event = UnixEvent {
            cgroup_id: 42,
            pid: 1234,
            kind,
            is_abstract: u32::from(is_abstract),
            path_len: len,
            path: [0; UNIX_PATH_MAX],
            _pad: 0,
        };
        event.path[..path.len()].copy_from_slice(path);
        // SAFETY: UnixEvent is plain integers without implicit padding.
        unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<UnixEvent>())
        }
        .to_vec()
    }

    #[test]
    fn events_decode() {
        let e =
            UnixSocketEvent::decode(&record(UNIX_KIND_CONNECT, false, b"/run/x.sock\0junk", 16))
                .unwrap();
        assert_eq!(
            e,
            UnixSocketEvent {
                cgroup_id: 42,
                pid: 1234,
                kind: UnixEventKind::Connect,
                path: "/run/x.sock".into(),
                is_abstract: false,
            }
        );
        let e = UnixSocketEvent::decode(&record(UNIX_KIND_SENDMSG, true, b"\0name\0x", 7)).unwrap();
        assert_eq!(
            (e.kind, e.path.as_str()),
            (UnixEventKind::Sendmsg, "@name@x")
        );
        let e = UnixSocketEvent::decode(&record(9, false, &[b'a'; UNIX_PATH_MAX], 500)).unwrap();
        assert_eq!(
            (e.kind, e.path.len()),
            (UnixEventKind::Other(9), UNIX_PATH_MAX)
        );
        assert!(UnixSocketEvent::decode(&[0; 20]).is_none());
    }

    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let uname = nix::sys::utsname::uname().expect("uname");
        let release = uname.release().to_string_lossy().into_owned();
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
            return true;
        };
        let (a, b): (u32, u32) = (a.parse().unwrap_or(0), b.parse().unwrap_or(0));
        (a, b) >= (major, minor)
    }

    /// Root, or skip (a failure when `EGRESSD_PRIVILEGED_TESTS=1`, as in the e2e tests).
    fn privileged() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var("EGRESSD_PRIVILEGED_TESTS")
                .ok()
                .is_none_or(|v| v != "1"),
            "this test needs root, and EGRESSD_PRIVILEGED_TESTS=1 says it must not be skipped"
        );
        eprintln!("skipping: needs root");
        false
    }

    const CHILD_ENV: &str = "EGRESSD_UNIX_PROBE";

    /// Runs in a child process that `probe` starts in a cgroup: tries each operation of
    /// `$EGRESSD_UNIX_PROBE` (`connect\tPATH` or `sendto\tPATH` lines, `@name` abstract)
    /// and prints `UNIXPROBE <index> <ok|errno>` for each.
    #[test]
    #[ignore = "run by unix_hooks_enforce_the_policy in a child process"]
    fn unix_probe_child() {
        let Ok(ops) = std::env::var(CHILD_ENV) else {
            return;
        };
        for (i, line) in ops.lines().enumerate() {
            let (op, target) = line.split_once('\t').expect("op\\ttarget");
            if let Some(variant) = op.strip_prefix("connect-") {
                let result = connect_raw(target.as_bytes(), variant == "junk");
                match result {
                    Ok(()) => println!("UNIXPROBE {i} ok"),
                    Err(e) => println!("UNIXPROBE {i} {}", e.raw_os_error().unwrap_or(-1)),
                }
                continue;
            }
            let addr = match target.strip_prefix('@') {
                Some(name) => UnixAddr::from_abstract_name(name.as_bytes()),
                None => UnixAddr::from_pathname(target),
            }
            .expect("address");
            let result = match op {
                "connect" => UnixStream::connect_addr(&addr).map(drop),
                _ => UnixDatagram::unbound().and_then(|s| s.send_to_addr(b"x", &addr).map(drop)),
            };
            match result {
                Ok(()) => println!("UNIXPROBE {i} ok"),
                Err(e) => println!("UNIXPROBE {i} {}", e.raw_os_error().unwrap_or(-1)),
            }
        }
    }

    /// connect() to `path` with an address length that stops right after it (no NUL), or
    /// (`junk`) that covers a NUL and `/../junk` after it.
    fn connect_raw(path: &[u8], junk: bool) -> std::io::Result<()> {
        // SAFETY: all-zero is a valid sockaddr_un.
        let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let mut bytes = path.to_vec();
        if junk {
            bytes.extend_from_slice(b"\0/../junk");
        }
        assert!(bytes.len() <= sa.sun_path.len());
        for (dst, src) in sa.sun_path.iter_mut().zip(&bytes) {
            *dst = *src as libc::c_char;
        }
        let len = size_of::<libc::sa_family_t>() + bytes.len();
        // SAFETY: plain socket(2), owned right away.
        let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let _sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        // SAFETY: `sa` is valid for `len` bytes.
        let rc = unsafe { libc::connect(raw, (&raw const sa).cast(), len as libc::socklen_t) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Runs `ops` in a child process in `cgroup` (or in this process's cgroup), from `cwd`;
    /// returns its pid and each result (`0` for success, else the errno).
    fn probe(
        cgroup: Option<&crate::sandbox::cgroup::Cgroup>,
        cwd: &Path,
        ops: &[(&str, String)],
    ) -> (u32, Vec<i32>) {
        let spec: Vec<String> = ops.iter().map(|(op, t)| format!("{op}\t{t}")).collect();
        let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
        cmd.args([
            "--exact",
            "loader::unix_tests::unix_probe_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec.join("\n"))
        .current_dir(cwd);
        if let Some(cgroup) = cgroup {
            let procs = CString::new(cgroup.procs_file().as_os_str().as_bytes()).unwrap();
            // SAFETY: only open/write/close between fork and exec, on memory prepared before.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting the probe");
        let pid = child.id();
        let out = child.wait_with_output().expect("probe output");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut results = vec![i32::MIN; ops.len()];
        for line in text.lines() {
            // The harness prints the test's name on the line of the first result.
            let Some(at) = line.find("UNIXPROBE ") else {
                continue;
            };
            let rest = &line[at + "UNIXPROBE ".len()..];
            let (i, r) = rest.split_once(' ').unwrap();
            results[i.parse::<usize>().unwrap()] = if r == "ok" { 0 } else { r.parse().unwrap() };
        }
        assert!(!results.contains(&i32::MIN), "probe output: {text}");
        (pid, results)
    }

    /// A scratch directory, removed (and a bpffs mounted in it unmounted) on drop.
    struct Scratch {
        dir: PathBuf,
        bpffs: Option<PathBuf>,
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            if let Some(bpffs) = &self.bpffs {
                let _ = nix::mount::umount2(bpffs, nix::mount::MntFlags::MNT_DETACH);
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const OK: i32 = 0;
    const EPERM: i32 = libc::EPERM;
    const ENOENT: i32 = libc::ENOENT;

    #[test]
    fn unix_hooks_enforce_the_policy() {
        if !privileged() {
            return;
        }
        let mut loader = Loader::load().expect("loading the programs");
        if let Err(why) = loader.unix_hooks() {
            assert!(
                !kernel_at_least(6, 7),
                "the Unix-socket hooks did not load: {why}"
            );
            eprintln!("skipping: kernel before 6.7 ({why})");
            return;
        }
        let pid = std::process::id();
        let mut scratch = Scratch {
            dir: std::env::temp_dir().join(format!("egressd-unix-test-{pid}")),
            bpffs: None,
        };
        let dir = scratch.dir.clone();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("allowed")).unwrap();
        let p = |name: &str| dir.join(name).display().to_string();
        let _denied = UnixListener::bind(p("denied.sock")).unwrap();
        let _inside = UnixListener::bind(p("allowed/in.sock")).unwrap();
        let _other = UnixListener::bind(p("other.sock")).unwrap();
        let _rel = UnixListener::bind(p("rel.sock")).unwrap();
        let _dgram = UnixDatagram::bind(p("dgram.sock")).unwrap();
        let p107 = format!(
            "{}/{}",
            dir.display(),
            "l".repeat(106 - dir.as_os_str().len())
        );
        assert_eq!(p107.len(), 107);
        let _long = UnixListener::bind(&p107).unwrap();
        let abstract_name = format!("egressd-unix-test-{pid}");
        let _abstract = UnixListener::bind_addr(
            &UnixAddr::from_abstract_name(abstract_name.as_bytes()).unwrap(),
        )
        .unwrap();
        let ops: Vec<(&str, String)> = vec![
            ("connect", p("denied.sock")),
            ("connect", p("allowed/in.sock")),
            (
                "connect",
                format!("{}/allowed/../other.sock", dir.display()),
            ),
            ("connect", format!("@{abstract_name}")),
            ("connect", "rel.sock".to_owned()),
            ("sendto", p("dgram.sock")),
            // An exact entry must not allow a longer path (nothing listens: ENOENT if let by).
            ("connect", p("denied.sockx")),
            // The same socket named without a NUL, and with one followed by junk.
            ("connect-nonul", p("denied.sock")),
            ("connect-junk", p("denied.sock")),
            // A 107-byte path, and a 108-byte one (no room for a NUL) that extends it.
            ("connect", p107.clone()),
            ("connect-nonul", format!("{p107}x")),
        ];
        let (denied, inside, dotdot, abstract_, relative, sendto, longer) = (0, 1, 2, 3, 4, 5, 6);

        // Without the programs everything that listens connects: the checks below can fail.
        let (_, plain) = probe(None, &dir, &ops);
        assert_eq!(
            plain,
            [OK, OK, OK, OK, OK, OK, ENOENT, OK, OK, OK, ENOENT],
            "{ops:?}"
        );

        let cgroup =
            crate::sandbox::cgroup::Cgroup::create(&format!("unix-test-{pid}")).expect("cgroup");
        let config = |flags| SandboxConfig {
            proxy_port4: 0,
            proxy_port6: 0,
            dns_port: 0,
            dns_port6: 0,
            flags,
        };
        let links = loader
            .attach(&cgroup, config(FLAG_UNIX_RULES))
            .expect("attach");
        let mut events = Vec::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut unix_events = runtime.block_on(async { loader.unix_events() }).unwrap();

        // Nothing allowed yet: every absolute path and the abstract name are refused.
        let (child, r) = probe(Some(&cgroup), &dir, &ops);
        assert_eq!(
            r,
            [
                EPERM, EPERM, EPERM, EPERM, OK, EPERM, EPERM, EPERM, EPERM, EPERM, EPERM
            ],
            "no entries"
        );
        runtime.block_on(async {
            let first = tokio::time::timeout(Duration::from_secs(5), unix_events.next())
                .await
                .expect("an event within 5 s")
                .unwrap();
            events.push(first);
        });
        while let Some(e) = unix_events.try_next() {
            events.push(e);
        }
        let find = |path: &str| events.iter().find(|e| e.path == path).cloned();
        let event = find(&p("denied.sock")).unwrap_or_else(|| panic!("{events:#?}"));
        assert_eq!(
            event,
            UnixSocketEvent {
                cgroup_id: cgroup.id(),
                pid: child,
                kind: UnixEventKind::Connect,
                path: p("denied.sock"),
                is_abstract: false,
            }
        );
        let event = find(&format!("@{abstract_name}")).unwrap_or_else(|| panic!("{events:#?}"));
        assert!(event.is_abstract && event.pid == child);
        let event = find(&p("dgram.sock")).unwrap_or_else(|| panic!("{events:#?}"));
        assert_eq!(event.kind, UnixEventKind::Sendmsg);
        assert!(
            find(&format!("{}/allowed/../other.sock", dir.display())).is_some(),
            "{events:#?}"
        );

        // The exact socket and the directory allowed.
        loader
            .set_unix_allow(
                cgroup.id(),
                &[
                    UnixAllow::Socket(dir.join("denied.sock")),
                    UnixAllow::Dir(dir.join("allowed")),
                    UnixAllow::Socket(p107.clone().into()),
                ],
            )
            .unwrap();
        let (_, r) = probe(Some(&cgroup), &dir, &ops);
        assert_eq!(
            r,
            [OK, OK, EPERM, EPERM, OK, EPERM, EPERM, OK, OK, OK, EPERM],
            "entries set"
        );
        assert_eq!(r[dotdot], EPERM);
        assert_eq!(r[longer], EPERM);

        // Abstract names allowed by the flag; the datagram socket added, the directory gone.
        loader
            .sandboxes
            .insert(
                cgroup.id(),
                config(FLAG_UNIX_RULES | FLAG_UNIX_ABSTRACT_ALLOW),
                0,
            )
            .unwrap();
        loader
            .set_unix_allow(
                cgroup.id(),
                &[
                    UnixAllow::Socket(dir.join("denied.sock")),
                    UnixAllow::Socket(dir.join("dgram.sock")),
                ],
            )
            .unwrap();
        let (_, r) = probe(Some(&cgroup), &dir, &ops);
        assert_eq!(
            r,
            [OK, EPERM, EPERM, OK, OK, OK, EPERM, OK, OK, EPERM, EPERM],
            "abstract allowed"
        );
        assert_eq!((r[inside], r[abstract_], r[sendto]), (EPERM, OK, OK));

        // Without FLAG_UNIX_RULES the hooks let everything through.
        loader.sandboxes.insert(cgroup.id(), config(0), 0).unwrap();
        let (_, r) = probe(Some(&cgroup), &dir, &ops);
        assert_eq!(r, plain, "rules off");
        assert_eq!((r[denied], r[relative]), (OK, OK));

        let counters = loader.counters();
        let count = |name| counters.iter().find(|(n, _)| *n == name).map_or(0, |c| c.1);
        assert!(count("unix_denied") >= 9, "{counters:?}");
        assert!(count("unix_abstract_denied") >= 2, "{counters:?}");

        // Detaching removes the hooks and the cgroup's entries.
        loader.detach(links);
        assert!(loader.unix_allow_keys(cgroup.id()).unwrap().is_empty());
        let (_, r) = probe(Some(&cgroup), &dir, &ops);
        assert_eq!(r, plain, "detached");

        // Pinned links keep the hooks attached; releasing them detaches them.
        let bpffs = dir.join("bpffs");
        std::fs::create_dir(&bpffs).unwrap();
        nix::mount::mount(
            Some("bpf"),
            &bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mounting a bpffs for the pins");
        scratch.bpffs = Some(bpffs.clone());
        let links = loader
            .attach(&cgroup, config(FLAG_UNIX_RULES))
            .expect("attach again");
        loader
            .set_unix_allow(cgroup.id(), &[UnixAllow::Dir(dir.clone())])
            .unwrap();
        let pinned = loader.pin(links, &bpffs.join("links")).expect("pin");
        for name in UNIX_PROGRAMS.map(|p| p.name) {
            assert!(pinned.dir().join(name).exists(), "{name} is not pinned");
        }
        let (_, r) = probe(Some(&cgroup), &dir, &ops);
        assert_eq!(
            r,
            [OK, OK, EPERM, EPERM, OK, OK, ENOENT, OK, OK, OK, ENOENT],
            "pinned"
        );
        loader.release(pinned);
        assert!(loader.unix_allow_keys(cgroup.id()).unwrap().is_empty());
        let (_, r) = probe(Some(&cgroup), &dir, &ops);
        assert_eq!(r, plain, "released");
        drop(scratch);
    }
}
