//! The kernel's half of the in-kernel relay (`egressd_proxy::KernelRelay`): the stream-verdict
//! program `egressd_relay`, attached to the `RELAY_SOCKETS` sockmap, and the `RELAY_PEERS` map
//! of each relayed socket's peer and byte counts.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::Context as _;
use aya::Ebpf;
use aya::maps::{HashMap, MapData, MapError, SockHash};
use aya::programs::SkSkb;
use egressd_ebpf_common::RelayPeer;
use egressd_proxy::{KernelRelay, RelayCounts};

use super::{program, take_map};

/// The stream-verdict program's name in the object.
pub(super) const RELAY_PROGRAM: &str = "egressd_relay";

/// The two relay maps, with the verdict program attached to the sockmap (it stays attached
/// while the loaded object lives).
pub struct MapRelay {
    sockets: Mutex<SockHash<MapData, u64>>,
    peers: Mutex<HashMap<MapData, u64, RelayPeer>>,
}

impl std::fmt::Debug for MapRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapRelay").finish_non_exhaustive()
    }
}

/// Loads the verdict program, takes the relay maps out of `ebpf` and attaches the program to
/// the sockmap. An error says why this kernel relays with splice instead (no
/// `CONFIG_BPF_STREAM_PARSER`, an old kernel, ...).
pub(super) fn load(ebpf: &mut Ebpf) -> anyhow::Result<MapRelay> {
    let prog: &mut SkSkb = program(ebpf, RELAY_PROGRAM)?;
    prog.load()
        .with_context(|| format!("verifying eBPF program {RELAY_PROGRAM}"))?;
    let sockets: SockHash<MapData, u64> =
        SockHash::try_from(take_map(ebpf, "RELAY_SOCKETS")?).context("RELAY_SOCKETS")?;
    let peers = HashMap::try_from(take_map(ebpf, "RELAY_PEERS")?).context("RELAY_PEERS")?;
    let prog: &mut SkSkb = program(ebpf, RELAY_PROGRAM)?;
    prog.attach(sockets.fd())
        .with_context(|| format!("attaching {RELAY_PROGRAM} to the RELAY_SOCKETS sockmap"))?;
    Ok(MapRelay {
        sockets: Mutex::new(sockets),
        peers: Mutex::new(peers),
    })
}

/// Locks a map; a panic elsewhere while holding it leaves the map itself intact.
fn lock<T>(map: &Mutex<T>) -> MutexGuard<'_, T> {
    map.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A map error as an I/O error, keeping the kernel's errno where there is one.
fn io_error(e: MapError) -> std::io::Error {
    match e {
        MapError::SyscallError(s) => s.io_error,
        e => std::io::Error::other(e),
    }
}

impl KernelRelay for MapRelay {
    fn pair(&self, cookie: u64, peer: u64) -> std::io::Result<()> {
        let entry = RelayPeer {
            peer,
            bytes: 0,
            unpaired: 0,
        };
        lock(&self.peers).insert(cookie, entry, 0).map_err(io_error)
    }

    fn insert(&self, cookie: u64, socket: BorrowedFd<'_>) -> std::io::Result<()> {
        lock(&self.sockets)
            .insert(cookie, socket.as_raw_fd(), 0)
            .map_err(io_error)
    }

    fn counts(&self, cookie: u64) -> std::io::Result<RelayCounts> {
        let entry = lock(&self.peers).get(&cookie, 0).map_err(io_error)?;
        Ok(RelayCounts {
            bytes: entry.bytes,
            unpaired: entry.unpaired,
        })
    }

    fn queued(&self, socket: BorrowedFd<'_>) -> std::io::Result<u64> {
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ on sockets) writes one int through the pointer.
        let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &raw mut queued) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(u64::try_from(queued).unwrap_or(0))
    }

    fn remove(&self, cookie: u64) -> RelayCounts {
        // Out of the sockmap first, so the counts read next are final.
        let _ = lock(&self.sockets).remove(&cookie);
        let counts = self.counts(cookie).unwrap_or_default();
        let _ = lock(&self.peers).remove(&cookie);
        counts
    }
}
