//! Waiting for the ends of connections the kernel relays, and for nothing else.
//!
//! A socket registered with tokio is watched for `EPOLLIN`: while the kernel relays its bytes,
//! every chunk would wake the runtime's driver for nothing. [`Ends`] keeps its own epoll set,
//! in which relayed sockets are registered for `EPOLLRDHUP` only (errors and hang-ups are
//! always reported). The kernel's "data arrived" and "space to write" wake-ups carry
//! `EPOLLIN` and `EPOLLOUT`, which that set does not ask for, so they wake no one; a FIN, a
//! reset or a hang-up does. The set itself is one descriptor registered with tokio, and each
//! connection waits on its own [`Notify`].

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// Most events taken from the set per `epoll_wait`.
const BATCH: usize = 64;

/// An epoll set, as tokio registers it.
struct Set(Epoll);

impl AsRawFd for Set {
    fn as_raw_fd(&self) -> RawFd {
        self.0.0.as_raw_fd()
    }
}

/// The epoll set of relayed sockets, and who waits for each.
pub(crate) struct Ends {
    set: AsyncFd<Set>,
    waiting: Mutex<HashMap<u64, Arc<Notify>>>,
    next: AtomicU64,
}

impl std::fmt::Debug for Ends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ends").finish_non_exhaustive()
    }
}

/// One connection's registration; dropping it takes its sockets out of the set.
pub(crate) struct Watched<'e> {
    ends: &'e Ends,
    token: u64,
    notify: Arc<Notify>,
    sockets: [BorrowedFd<'e>; 2],
}

impl Ends {
    /// A new, empty set. Needs a tokio runtime with I/O enabled.
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
        Ok(Self {
            set,
            waiting: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        })
    }

    /// Watches both sockets of one connection for their ends.
    pub(crate) fn watch<'e>(&'e self, sockets: [BorrowedFd<'e>; 2]) -> io::Result<Watched<'e>> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token, Arc::clone(&notify));
        let watched = Watched {
            ends: self,
            token,
            notify,
            sockets,
        };
        let flags = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
        for socket in sockets {
            self.set
                .get_ref()
                .0
                .add(socket, EpollEvent::new(flags, token))?;
        }
        Ok(watched)
    }

    /// Hands each pending event to the connection it belongs to.
    fn dispatch(&self) -> io::Result<()> {
        let mut events = [EpollEvent::empty(); BATCH];
        loop {
            let n = self.set.get_ref().0.wait(&mut events, EpollTimeout::ZERO)?;
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

impl Watched<'_> {
    /// Returns once something happened to one of the sockets since the last call (or since
    /// the registration): a FIN, an error or a hang-up. Ask the sockets what it was.
    pub(crate) async fn changed(&self) {
        loop {
            tokio::select! {
                biased;
                () = self.notify.notified() => return,
                guard = self.ends.set.readable() => {
                    let Ok(mut guard) = guard else {
                        // The runtime is shutting down: let the caller look at the sockets.
                        return;
                    };
                    if let Err(e) = self.ends.dispatch() {
                        tracing::debug!("reading the relay's epoll set: {e}");
                        return;
                    }
                    // Events that come after the drain make a new edge, which this clear
                    // does not erase.
                    guard.clear_ready();
                }
            }
        }
    }
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        for socket in self.sockets {
            let _ = self.ends.set.get_ref().0.delete(socket);
        }
        self.ends
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.token);
    }
}
