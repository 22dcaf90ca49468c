//! Every map the kernel programs use, in one place. Types come from `egressd-ebpf-common`.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, SockHash},
};
use egressd_ebpf_common::{
    ClientKey, MAX_RELAY_SOCKETS, MAX_SANDBOXES, MAX_TRACKED_SOCKETS, MAX_UNIX_ALLOW, OrigDst,
    RelayPeer, SandboxConfig, UNIX_EVENTS_BYTES, UnixAllowData, counter,
};

/// Sandbox settings by cgroup v2 id; written by the loader before the first process joins.
/// A sandbox covers its cgroup and every cgroup below it (see [`current_sandbox`]).
#[map]
pub static SANDBOXES: HashMap<u64, SandboxConfig> = HashMap::with_max_entries(MAX_SANDBOXES, 0);

/// The deepest cgroup level [`current_sandbox`] looks at (the root is level 0; a container of
/// a Kubernetes pod is at level 4, `kubepods.slice/<qos>.slice/<pod>.slice/<container>.scope`).
const MAX_CGROUP_LEVEL: i32 = 16;

/// The sandbox of the current task: its own cgroup's entry, else that of its nearest
/// ancestor that has one (a pod attached at its pod cgroup covers the containers that the
/// runtime creates below it later), with the id of the cgroup the entry is under.
#[inline(always)]
pub fn current_sandbox() -> Option<(u64, SandboxConfig)> {
    // SAFETY: the helper has no preconditions in cgroup programs.
    let own = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is copied out at once; the map entry is plain data.
    if let Some(cfg) = unsafe { SANDBOXES.get(&own) } {
        return Some((own, *cfg));
    }
    // Deepest first, so the nearest ancestor wins; levels below the task's own give 0.
    let mut level = MAX_CGROUP_LEVEL;
    while level > 0 {
        // SAFETY: as above; an out-of-range level returns 0.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id != 0 && id != own {
            // SAFETY: as above.
            if let Some(cfg) = unsafe { SANDBOXES.get(&id) } {
                return Some((id, *cfg));
            }
        }
        level -= 1;
    }
    None
}

/// Original destination by socket cookie: written at connect, read by getpeername and by
/// the sockops re-keying, removed when the socket closes.
#[map]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

/// Original destination by client address: written by sockops before the SYN leaves,
/// read (and removed) by the proxy after `accept()`.
#[map]
pub static ORIG_BY_CLIENT: LruHashMap<ClientKey, OrigDst> =
    LruHashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

/// Per-CPU event counters, indexed by `egressd_ebpf_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Unix-socket paths each sandbox may connect/send to: exact socket paths (NUL included)
/// and directory prefixes, keyed by cgroup id first. Written by the loader.
#[map]
pub static UNIX_ALLOW: LpmTrie<UnixAllowData, u32> = LpmTrie::with_max_entries(MAX_UNIX_ALLOW, 0);

/// Refused Unix-socket addresses (`UnixEvent`), read by the daemon.
#[map]
pub static UNIX_EVENTS: RingBuf = RingBuf::with_byte_size(UNIX_EVENTS_BYTES, 0);

/// Sockets of pass-through connections relayed in the kernel, by socket cookie; the
/// stream-verdict program (`relay.rs`) is attached to it. Written by the proxy.
#[map]
pub static RELAY_SOCKETS: SockHash<u64> = SockHash::with_max_entries(MAX_RELAY_SOCKETS, 0);

/// Each relayed socket's peer and byte counts, by socket cookie. Written by the proxy
/// before the socket goes into `RELAY_SOCKETS`; counted by the kernel program.
#[map]
pub static RELAY_PEERS: HashMap<u64, RelayPeer> = HashMap::with_max_entries(MAX_RELAY_SOCKETS, 0);

/// Adds one to counter `index`.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer is to this CPU's slot of a per-CPU array; nothing else on
        // this CPU runs concurrently with a BPF program that has it.
        unsafe { *slot += 1 };
    }
}
