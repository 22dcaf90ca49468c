//! `cgroup/connect_unix` and `cgroup/sendmsg_unix` (Linux 6.7+): refuse Unix-socket
//! addresses the sandbox's policy does not allow.
//!
//! With `FLAG_UNIX_RULES` set for the sandbox:
//! - abstract and unnamed addresses pass only with `FLAG_UNIX_ABSTRACT_ALLOW`;
//! - relative paths pass (the sandbox's mount namespace confines how they resolve);
//! - absolute paths with a `..` segment are refused;
//! - other absolute paths pass when `UNIX_ALLOW` has an entry for the cgroup that is a
//!   prefix of them (an exact socket path, NUL included, or a directory ending in `/`).
//!
//! The address is not in `struct bpf_sock_addr`'s fields for `AF_UNIX`. It is read from the
//! kernel's real context, `struct bpf_sock_addr_kern`, whose address is the runtime value
//! of the context pointer: `bpf_probe_read_kernel` of its head gives `uaddr` and
//! `uaddrlen`, then `bpf_probe_read_kernel(_str)` of `uaddr->sun_path`. Handing the context
//! pointer to a helper as a plain value is allowed only to programs loaded with
//! `CAP_PERFMON` (or `CAP_SYS_ADMIN`), as egressd's are; the kernel selftests reach the
//! same struct through the kfuncs `bpf_cast_to_kern_ctx` and `bpf_rdonly_cast`, which aya
//! cannot link. The loader checks the two offsets against the kernel's BTF before it loads
//! these programs, and does not load them when they differ.
//!
//! Everything here is `#[inline(always)]`: egressd loads these two programs itself (aya 0.14
//! knows neither their sections nor their attach types) and links no subprograms, so the
//! entry sections must be self-contained.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        generated::{bpf_probe_read_kernel, bpf_probe_read_kernel_str},
    },
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use egressd_ebpf_common::{
    FLAG_UNIX_ABSTRACT_ALLOW, FLAG_UNIX_RULES, UNIX_PATH_MAX, UnixAllowData, UnixEvent, counter,
    sock_addr_kern,
};

use crate::maps::{UNIX_ALLOW, UNIX_EVENTS, count, current_sandbox};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
/// `sizeof(sa_family_t)`: `uaddrlen` counts it, `sun_path` follows it.
const FAMILY_LEN: u32 = 2;

/// The start of `struct bpf_sock_addr_kern`, up to and including `uaddrlen`.
#[repr(C)]
struct KernHead {
    words: [u64; sock_addr_kern::UADDRLEN / 8],
    uaddrlen: u32,
    _pad: u32,
}

/// What the address turned out to be.
enum Addr {
    /// Abstract or unnamed; `len` bytes of `sun_path` (the leading NUL included), copied.
    Abstract { len: u32 },
    /// A path not starting with `/` (not copied).
    Relative,
    /// An absolute path, copied up to its first NUL (the kernel ends a pathname there) into
    /// the zeroed key; `len` bytes of `sun_path` were in the address.
    Absolute { len: u32, dotdot: bool },
}

/// A `UNIX_ALLOW` key laid out like aya's packed `lpm_trie::Key<UnixAllowData>` (the same
/// first 120 bytes, which are all the map reads), 8-byte aligned so that it can be zeroed
/// word by word, with room after the path for the NUL that `bpf_probe_read_kernel_str`
/// writes after a 108-byte path.
#[repr(C, align(8))]
struct LookupKey {
    prefix_len: u32,
    data: UnixAllowData,
    spill: [u8; 8],
}

const _: () =
    assert!(core::mem::size_of::<LookupKey>() == core::mem::size_of::<Key<UnixAllowData>>() + 8);

/// Offset of the path in `LookupKey`.
const PATH_OFFSET: usize =
    core::mem::offset_of!(LookupKey, data) + core::mem::offset_of!(UnixAllowData, path);

impl LookupKey {
    /// Makes `slot` a full-length key for `cgroup` with an all-zero path, in place.
    ///
    /// Written with volatile word stores into the key's final place: LLVM turns a plain
    /// zeroing (or a move of a zeroed value) into a call to `memset`, a subprogram in
    /// `.text`, which these self-contained programs cannot have.
    #[inline(always)]
    fn init(slot: &mut core::mem::MaybeUninit<Self>, cgroup: u64) -> &mut Self {
        let words = slot.as_mut_ptr().cast::<u32>();
        let mut i = 0;
        while i < core::mem::size_of::<Self>() / 4 {
            // SAFETY: `i` stays within the key, which is 4-byte aligned and a multiple of
            // 4 bytes long.
            unsafe { core::ptr::write_volatile(words.add(i), 0) };
            i += 1;
        }
        // SAFETY: every byte was written above; all-zero is a valid key.
        let key = unsafe { slot.assume_init_mut() };
        key.prefix_len = UnixAllowData::FULL_PREFIX_BITS;
        key.data.cgroup_id = cgroup.to_ne_bytes();
        key
    }

    #[inline(always)]
    fn as_trie_key(&self) -> &Key<UnixAllowData> {
        // SAFETY: its first 120 bytes have the size and field order of the packed
        // `Key<UnixAllowData>` (alignment 1), so they are a valid key.
        unsafe { &*(core::ptr::from_ref(self).cast::<Key<UnixAllowData>>()) }
    }
}

/// Decides a connect (`kind` = `UNIX_KIND_CONNECT`) or sendmsg (`UNIX_KIND_SENDMSG`).
/// Returns 1 to allow, 0 to refuse (`EPERM`).
#[inline(always)]
pub fn check(ctx: &SockAddrContext, kind: u32) -> i32 {
    // The rules are the sandbox's: keyed by the cgroup its entry is under.
    let found = current_sandbox();
    let cgroup = match found {
        Some((id, _)) => id,
        // SAFETY: the helper has no preconditions in cgroup sock_addr programs.
        None => unsafe { bpf_get_current_cgroup_id() },
    };
    let mut slot = core::mem::MaybeUninit::uninit();
    let key = LookupKey::init(&mut slot, cgroup);
    let Some((_, cfg)) = found else {
        return refuse(counter::NO_SANDBOX, cgroup, kind, &key.data.path, 0, false);
    };
    let flags = cfg.flags;
    if flags & FLAG_UNIX_RULES == 0 {
        return ALLOW;
    }
    let Some(addr) = read_addr(ctx, key) else {
        // Fail closed: an address that cannot be read is not let through.
        return refuse(counter::UNIX_DENIED, cgroup, kind, &key.data.path, 0, false);
    };
    match addr {
        Addr::Abstract { len } => {
            if flags & FLAG_UNIX_ABSTRACT_ALLOW != 0 {
                ALLOW
            } else {
                let path = &key.data.path;
                refuse(counter::UNIX_ABSTRACT_DENIED, cgroup, kind, path, len, true)
            }
        }
        Addr::Relative => ALLOW,
        Addr::Absolute { len, dotdot } => {
            if !dotdot && UNIX_ALLOW.get(key.as_trie_key()).is_some() {
                ALLOW
            } else {
                let path = &key.data.path;
                refuse(counter::UNIX_DENIED, cgroup, kind, path, len, false)
            }
        }
    }
}

/// Reads and classifies the address; copies it into `key` (see [`Addr`]). `None` when the
/// kernel memory cannot be read.
#[inline(always)]
fn read_addr(ctx: &SockAddrContext, key: &mut LookupKey) -> Option<Addr> {
    let mut head = core::mem::MaybeUninit::<KernHead>::uninit();
    // SAFETY: reads the head of `struct bpf_sock_addr_kern` (through `uaddrlen`) at the
    // context's address into `head`, which is larger; the helper checks the source and
    // fails rather than fault (and zeroes the destination when it fails).
    let ret = unsafe {
        bpf_probe_read_kernel(
            head.as_mut_ptr().cast::<c_void>(),
            (sock_addr_kern::UADDRLEN + 4) as u32,
            ctx.as_ptr().cast_const(),
        )
    };
    if ret != 0 {
        return None;
    }
    // SAFETY: the helper succeeded, so the fields read below were written.
    let head = unsafe { head.assume_init_ref() };
    let uaddrlen = head.uaddrlen;
    if uaddrlen <= FAMILY_LEN {
        // Only the family: an unnamed address (the kernel refuses it before the hook).
        return Some(Addr::Abstract { len: 0 });
    }
    let mut len = uaddrlen - FAMILY_LEN;
    if len > UNIX_PATH_MAX as u32 {
        len = UNIX_PATH_MAX as u32;
    }
    let sun_path = (head.words[sock_addr_kern::UADDR / 8] + u64::from(FAMILY_LEN)) as *const c_void;
    let path = core::ptr::from_mut(key)
        .cast::<u8>()
        .wrapping_add(PATH_OFFSET);
    let mut first = core::mem::MaybeUninit::<u8>::uninit();
    // SAFETY: one byte into `first`, through the fault-tolerant helper.
    let ret = unsafe { bpf_probe_read_kernel(first.as_mut_ptr().cast(), 1, sun_path) };
    if ret != 0 {
        return None;
    }
    // SAFETY: written by the helper, which succeeded.
    match unsafe { first.assume_init() } {
        0 => {
            // Abstract: copied as it is, for the event.
            // SAFETY: `len` is at most the path's 108 bytes, inside `key`.
            let ret = unsafe { bpf_probe_read_kernel(path.cast(), len, sun_path) };
            (ret == 0).then_some(Addr::Abstract { len })
        }
        b'/' => {
            // Up to the first NUL within the `len` bytes, then a NUL (at `len` at the
            // latest: in `spill` for a 108-byte path); the zeroes after it stay. (The
            // helper also reads the byte after `sun_path`'s `len`, inside the kernel's
            // sockaddr_storage, and overwrites it with the NUL.)
            // SAFETY: at most `len + 1` <= 109 bytes from the path's start, inside `key`.
            let ret = unsafe { bpf_probe_read_kernel_str(path.cast(), len + 1, sun_path) };
            if ret < 0 {
                return None;
            }
            let dotdot = has_dotdot(&key.data.path);
            Some(Addr::Absolute { len, dotdot })
        }
        _ => Some(Addr::Relative),
    }
}

/// Whether the NUL-terminated (or 108-byte) absolute path has a `..` segment (`/../` or a
/// trailing `/..`).
///
/// Written for the verifier, which walks every iteration: it only reads the key, and the
/// only state carried from one byte to the next is the segment state (four values).
#[inline(always)]
fn has_dotdot(path: &[u8; UNIX_PATH_MAX]) -> bool {
    // Segment state: 0 just after '/', 1 ".", 2 "..", 3 anything else.
    let mut seg: u32 = 0;
    let mut i = 0;
    while i < UNIX_PATH_MAX {
        let c = path[i];
        if c == 0 {
            break;
        }
        if c == b'/' {
            if seg == 2 {
                return true;
            }
            seg = 0;
        } else if c == b'.' && seg < 2 {
            seg += 1;
        } else {
            seg = 3;
        }
        i += 1;
    }
    seg == 2
}

/// Counts a refusal, reports it on `UNIX_EVENTS` (when there is room) and refuses.
#[inline(always)]
fn refuse(
    reason: u32,
    cgroup: u64,
    kind: u32,
    path: &[u8; UNIX_PATH_MAX],
    path_len: u32,
    is_abstract: bool,
) -> i32 {
    count(reason);
    if let Some(mut entry) = UNIX_EVENTS.reserve::<UnixEvent>(0) {
        let event = entry.as_mut_ptr();
        // SAFETY: `event` points to a reserved ring-buffer record of `UnixEvent`'s size;
        // every field is written before it is submitted.
        unsafe {
            (*event).cgroup_id = cgroup;
            (*event).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            (*event).kind = kind;
            (*event).is_abstract = u32::from(is_abstract);
            (*event).path_len = path_len;
            (*event).path = *path;
            (*event)._pad = 0;
        }
        entry.submit(0);
    }
    REFUSE
}
