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
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, ProgramError,
        SockOps,
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
    /// The in-kernel relay for pass-through, loaded and attached to its sockmap; or why not.
    relay: Result<Arc<relay::MapRelay>, String>,
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

        let relay = relay::load(&mut ebpf)
            .map(Arc::new)
            .map_err(|e| format!("{e:#}"));
        if let Err(why) = &relay {
            tracing::debug!("in-kernel relay not available, pass-through uses splice: {why}");
        }
        let sandboxes = HashMap::try_from(take_map(&mut ebpf, "SANDBOXES")?)?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, "COUNTERS")?)?;
        let by_client = HashMap::try_from(take_map(&mut ebpf, "ORIG_BY_CLIENT")?)?;
        let unix_allow = LpmTrie::try_from(take_map(&mut ebpf, "UNIX_ALLOW")?)?;
        let unix_events = Some(take_map(&mut ebpf, "UNIX_EVENTS")?);
        release_freed_heap();
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
            relay,
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
        let ebpf = &mut self.ebpf;
        for name in SOCK_ADDR_PROGRAMS {
            let id = attach_program::<CgroupSockAddr>(ebpf, name, cgroup)?;
            links.sock_addr.push((name, id));
        }
        links.ops = Some(attach_program::<SockOps>(ebpf, SOCK_OPS_PROGRAM, cgroup)?);
        links.release = Some(attach_program::<CgroupSock>(
            ebpf,
            SOCK_RELEASE_PROGRAM,
            cgroup,
        )?);
        links.skb = Some(attach_program::<CgroupSkb>(
            ebpf,
            SKB_EGRESS_PROGRAM,
            cgroup,
        )?);
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
        let ebpf = &mut self.ebpf;
        let mut taken = take_links::<CgroupSockAddr>(ebpf, sock_addr);
        taken.extend(take_links::<SockOps>(
            ebpf,
            ops.map(|id| (SOCK_OPS_PROGRAM, id)),
        ));
        taken.extend(take_links::<CgroupSock>(
            ebpf,
            release.map(|id| (SOCK_RELEASE_PROGRAM, id)),
        ));
        taken.extend(take_links::<CgroupSkb>(
            ebpf,
            skb.map(|id| (SKB_EGRESS_PROGRAM, id)),
        ));
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
        let ebpf = &mut self.ebpf;
        detach_links::<CgroupSockAddr>(ebpf, sock_addr);
        detach_links::<SockOps>(ebpf, ops.map(|id| (SOCK_OPS_PROGRAM, id)));
        detach_links::<CgroupSock>(ebpf, release.map(|id| (SOCK_RELEASE_PROGRAM, id)));
        detach_links::<CgroupSkb>(ebpf, skb.map(|id| (SKB_EGRESS_PROGRAM, id)));
        self.forget_unix_allow(cgroup_id);
        if let Err(e) = self.sandboxes.remove(&cgroup_id) {
            tracing::warn!("removing cgroup {cgroup_id} from the SANDBOXES map: {e}");
        }
    }

    /// The in-kernel relay the proxies hand pass-through connections to, or why this kernel
    /// has none (they use splice then).
    pub fn kernel_relay(&self) -> Result<Arc<dyn egressd_proxy::KernelRelay>, String> {
        match &self.relay {
            Ok(relay) => Ok(Arc::clone(relay) as Arc<dyn egressd_proxy::KernelRelay>),
            Err(why) => Err(why.clone()),
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

/// The aya program types egressd attaches to a cgroup. aya gives each its own inherent
/// `attach`, `detach` and `take_link` (and link-id type), so this trait lets one generic
/// helper attach, detach or take the links of any of them.
trait CgroupProgram: Sized {
    /// The id aya hands out for one attachment of this program type.
    type LinkId;
    /// Looks program `name` of this type up in `ebpf`.
    fn find<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Self>;
    /// Attaches the program to `cgroup` (single mode).
    fn attach_to(&mut self, cgroup: &std::fs::File) -> Result<Self::LinkId, ProgramError>;
    /// Detaches attachment `id`.
    fn detach_link(&mut self, id: Self::LinkId) -> Result<(), ProgramError>;
    /// Takes attachment `id` out of aya's bookkeeping as an [`FdLink`] (which pinning needs).
    fn take_fd_link(&mut self, id: Self::LinkId) -> anyhow::Result<FdLink>;
}

/// Implements [`CgroupProgram`] for aya program type `$ty` by forwarding to its inherent
/// methods; `$arg`s are the attach arguments it takes before the mode.
macro_rules! cgroup_program {
    ($ty:ty, $id:ty $(, $arg:expr)*) => {
        impl CgroupProgram for $ty {
            type LinkId = $id;
            fn find<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Self> {
                program(ebpf, name)
            }
            fn attach_to(&mut self, cgroup: &std::fs::File) -> Result<$id, ProgramError> {
                self.attach(cgroup, $($arg,)* CgroupAttachMode::Single)
            }
            fn detach_link(&mut self, id: $id) -> Result<(), ProgramError> {
                self.detach(id)
            }
            fn take_fd_link(&mut self, id: $id) -> anyhow::Result<FdLink> {
                Ok(FdLink::try_from(self.take_link(id)?)?)
            }
        }
    };
}

cgroup_program!(CgroupSockAddr, CgroupSockAddrLinkId);
cgroup_program!(SockOps, SockOpsLinkId);
cgroup_program!(CgroupSock, CgroupSockLinkId);
cgroup_program!(CgroupSkb, CgroupSkbLinkId, CgroupSkbAttachType::Egress);

/// Attaches program `name` (of type `T`) to `cgroup`.
fn attach_program<T: CgroupProgram>(
    ebpf: &mut Ebpf,
    name: &str,
    cgroup: &Cgroup,
) -> anyhow::Result<T::LinkId> {
    T::find(ebpf, name)?
        .attach_to(cgroup.dir())
        .with_context(|| format!("attaching {name} to cgroup {}", cgroup.path().display()))
}

/// Takes the links `ids` (program name, attachment) of type-`T` programs out of aya as
/// [`FdLink`]s, for pinning. Each result stays with its program's name, so the caller can
/// say which one failed once it has taken all of them.
fn take_links<T: CgroupProgram>(
    ebpf: &mut Ebpf,
    ids: impl IntoIterator<Item = (&'static str, T::LinkId)>,
) -> Vec<(&'static str, anyhow::Result<FdLink>)> {
    ids.into_iter()
        .map(|(name, id)| (name, T::find(ebpf, name).and_then(|p| p.take_fd_link(id))))
        .collect()
}

/// Detaches the links `ids` (program name, attachment) of type-`T` programs. Failures are
/// logged, not returned: detaching is cleanup, and each link is tried.
fn detach_links<T: CgroupProgram>(
    ebpf: &mut Ebpf,
    ids: impl IntoIterator<Item = (&'static str, T::LinkId)>,
) {
    for (name, id) in ids {
        if let Err(e) = T::find(ebpf, name).and_then(|p| Ok(p.detach_link(id)?)) {
            tracing::warn!("detaching {name}: {e:#}");
        }
    }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("the embedded eBPF object has no map {name}"))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so loading works there.
/// Hands the heap that loading freed back to the kernel. Relocating the programs parses the
/// kernel's BTF (several MiB) and the embedded object; glibc keeps such freed memory in the
/// process, where an idle daemon would carry it as resident memory for its whole life.
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns glibc's own free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

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

mod relay;
mod unix_hooks;

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

/// The Unix-socket hooks against real sockets (as root), and their object, layout and
/// encodings.
#[cfg(test)]
mod unix_tests;
