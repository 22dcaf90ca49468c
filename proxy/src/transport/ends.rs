//! Waiting for the ends of connections the kernel relays, and for nothing else.
//!
//! A socket registered with tokio is watched for `EPOLLIN`: while the kernel relays its bytes,
//! every chunk would wake the runtime's driver for nothing. [`Ends`] keeps its own epoll set,
//! in which relayed sockets are registered for `EPOLLRDHUP` only (errors and hang-ups are
//! always reported). The kernel's "data arrived" and "space to write" wake-ups carry
//! `EPOLLIN` and `EPOLLOUT`, which that set does not ask for, so they wake no one; a FIN, a
//! reset or a hang-up does. The set itself is one descriptor registered with tokio, watched
//! by one dispatcher task that hands each event to the connection it names; each connection
//! waits on its own [`Notify`], so an event wakes one task, however many connections are
//! held.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Most events taken from the set per `epoll_wait`.
const BATCH: usize = 64;

/// An epoll set, as tokio registers it.
struct Set(Epoll);

impl AsRawFd for Set {
    fn as_raw_fd(&self) -> RawFd {
        self.0.0.as_raw_fd()
    }
}

/// The epoll set of relayed sockets, and who waits for each. Dropping it stops its
/// dispatcher.
pub(crate) struct Ends {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

/// What the dispatcher and the connections share.
struct Shared {
    set: AsyncFd<Set>,
    waiting: Mutex<HashMap<u64, Arc<Notify>>>,
    next: AtomicU64,
    /// The dispatcher stopped on an error: connections look at their sockets every
    /// [`DEAD_POLL`] instead, and new ones are not handed to the kernel.
    dead: AtomicBool,
}

/// How often a connection looks at its sockets once the dispatcher is gone.
const DEAD_POLL: std::time::Duration = std::time::Duration::from_millis(10);

impl std::fmt::Debug for Ends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ends").finish_non_exhaustive()
    }
}

/// One connection's registration; dropping it takes its sockets out of the set.
pub(crate) struct Watched<'e> {
    shared: &'e Shared,
    token: u64,
    notify: Arc<Notify>,
    sockets: [BorrowedFd<'e>; 2],
}

impl Ends {
    /// A new, empty set, and its dispatcher task. Needs a tokio runtime with I/O enabled.
    pub(crate) fn new() -> io::Result<Self> {
        let set = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        // `register_with_interest` is the same call marked unsafe: its condition (the
        // descriptor stays open and the same while registered) holds, as `Set` owns it and
        // only the `AsyncFd` owns the `Set`.
        #[allow(
            deprecated,
            reason = "this crate forbids unsafe; the I/O-safety condition holds (see above)"
        )]
        let set = AsyncFd::with_interest(Set(set), Interest::READABLE)?;
        let shared = Arc::new(Shared {
            set,
            waiting: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            dead: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        tokio::spawn(dispatch(Arc::clone(&shared), stop.clone()));
        Ok(Self { shared, stop })
    }

    /// Whether the dispatcher still runs (if not, connections are better spliced).
    pub(crate) fn alive(&self) -> bool {
        !self.shared.dead.load(Ordering::Acquire)
    }

    /// Watches both sockets of one connection for their ends.
    pub(crate) fn watch<'e>(&'e self, sockets: [BorrowedFd<'e>; 2]) -> io::Result<Watched<'e>> {
        let shared = &*self.shared;
        if shared.dead.load(Ordering::Acquire) {
            return Err(io::Error::other("the relay's end watcher stopped"));
        }
        let token = shared.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        shared
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token, Arc::clone(&notify));
        let watched = Watched {
            shared,
            token,
            notify,
            sockets,
        };
        let flags = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
        for socket in sockets {
            shared
                .set
                .get_ref()
                .0
                .add(socket, EpollEvent::new(flags, token))?;
        }
        Ok(watched)
    }
}

impl Drop for Ends {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Shared {
    /// Hands each pending event to the connection it belongs to.
    fn dispatch(&self) -> io::Result<()> {
        let mut events = [EpollEvent::empty(); BATCH];
        loop {
            let n = match self.set.get_ref().0.wait(&mut events, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            {
                let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
                for event in &events[..n] {
                    if let Some(notify) = waiting.get(&event.data()) {
                        notify.notify_one();
                    }
                }
            }
            if n < BATCH {
                return Ok(());
            }
        }
    }
}

/// The dispatcher: the one task that waits on the set, until `stop`.
async fn dispatch(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            guard = shared.set.readable() => {
                let Ok(mut guard) = guard else { return };
                if let Err(e) = shared.dispatch() {
                    tracing::error!(
                        "reading the in-kernel relay's epoll set: {e}; relayed connections \
                         now poll for their ends and new ones are spliced"
                    );
                    shared.dead.store(true, Ordering::Release);
                    for notify in shared.waiting.lock().unwrap_or_else(PoisonError::into_inner).values() {
                        notify.notify_one();
                    }
                    return;
                }
                // Events that come after the drain make a new edge, which this clear
                // does not erase.
                guard.clear_ready();
            }
        }
    }
}

impl Watched<'_> {
    /// Returns once something happened to one of the sockets since the last call (or since
    /// the registration): a FIN, an error or a hang-up. Ask the sockets what it was.
    pub(crate) async fn changed(&self) {
        if self.shared.dead.load(Ordering::Acquire) {
            tokio::time::sleep(DEAD_POLL).await;
        } else {
            self.notify.notified().await;
        }
    }
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        for socket in self.sockets {
            let _ = self.shared.set.get_ref().0.delete(socket);
        }
        self.shared
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.token);
    }
}
