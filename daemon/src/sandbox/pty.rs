//! The sandbox's terminal: a new pseudo-terminal relayed to the invoking one.
//!
//! When egressd's stdin, stdout or stderr is a terminal, the sandbox does not get it: a
//! program holding the invoking terminal can push keystrokes into it (`TIOCSTI`), or make
//! the terminal answer escape sequences into its input, and either runs in the invoking
//! shell after egressd exits, outside the sandbox. So, as `sudo` with `use_pty` and
//! `su --pty` do, egressd opens a pseudo-terminal, gives its slave side to the sandbox (its
//! init makes it the controlling terminal of a session of its own), puts the invoking
//! terminal in raw mode and copies bytes both ways; window size changes follow (SIGWINCH).
//! Ctrl-C and the other control characters reach the sandbox through the slave's line
//! discipline, as they would on a real terminal.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, AtomicI32, Ordering},
};

use anyhow::Context as _;
use nix::sys::termios::{self, SetArg, Termios};

/// The pseudo-terminal of one run, and the invoking terminal's saved mode.
pub struct Relay {
    /// The master side, kept by egressd.
    master: OwnedFd,
    /// The slave side, passed to the sandbox; closed here once the sandbox has it.
    slave: Option<OwnedFd>,
    /// Which of stdin, stdout, stderr were terminals (and get the slave).
    ttys: [bool; 3],
    /// The invoking terminal's mode before raw mode, restored on drop.
    saved: Option<(RawFd, Termios)>,
    /// Signalled when the output copier has written the sandbox's last bytes.
    output_done: Option<std::sync::mpsc::Receiver<()>>,
}

/// How long the end of a run waits for the sandbox's last output to be copied (it is all in
/// the pseudo-terminal's buffer once the sandbox has exited).
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The master's descriptor, for the SIGWINCH handler.
static MASTER: AtomicI32 = AtomicI32::new(-1);
/// Set once the relay is over, so the stdin copier stops writing.
static DONE: AtomicBool = AtomicBool::new(false);

fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

impl Relay {
    /// A relay if any of stdin, stdout and stderr is a terminal; `None` otherwise. The
    /// terminal belongs to `uid` (as a login's does), so that programs that reopen it by
    /// name (`ttyname`: password prompts, pinentry) can.
    pub fn open_if_terminal(uid: u32, gid: u32) -> anyhow::Result<Option<Self>> {
        let ttys = [is_tty(0), is_tty(1), is_tty(2)];
        if !ttys.iter().any(|t| *t) {
            return Ok(None);
        }
        let pty = nix::pty::openpty(None, None).context("opening a pseudo-terminal")?;
        nix::unistd::fchown(
            &pty.slave,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .context("giving the pseudo-terminal to the command's user")?;
        nix::sys::stat::fchmod(&pty.slave, nix::sys::stat::Mode::from_bits_truncate(0o620))
            .context("setting the pseudo-terminal's mode")?;
        // The size of the invoking terminal, if one of ours is.
        if let Some(fd) = (0..3).find(|fd| ttys[*fd as usize]) {
            copy_window_size(fd, pty.master.as_raw_fd());
        }
        let mut relay = Self {
            master: pty.master,
            slave: Some(pty.slave),
            ttys,
            saved: None,
            output_done: None,
        };
        if ttys[0] {
            // SAFETY: fd 0 stays open for the whole run.
            let stdin = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
            let saved = termios::tcgetattr(stdin).context("reading the terminal's mode")?;
            let mut raw = saved.clone();
            termios::cfmakeraw(&mut raw);
            termios::tcsetattr(stdin, SetArg::TCSANOW, &raw)
                .context("putting the terminal in raw mode")?;
            relay.saved = Some((0, saved));
        }
        Ok(Some(relay))
    }

    /// The descriptors the sandbox gets as stdin, stdout and stderr (`None`: egressd's own).
    pub fn stdio(&self) -> [Option<RawFd>; 3] {
        let slave = self.slave.as_ref().map(|s| s.as_raw_fd());
        [0, 1, 2].map(|i| if self.ttys[i] { slave } else { None })
    }

    /// Starts copying, once the sandbox has started (and holds the slave): the invoking
    /// terminal's input to the master, the master's output to the invoking terminal. The
    /// copiers end when the sandbox closes its last descriptor of the slave.
    pub fn start(&mut self) -> anyhow::Result<()> {
        // Only the sandbox holds the slave from here on: its last close ends the output.
        self.slave = None;
        MASTER.store(self.master.as_raw_fd(), Ordering::SeqCst);
        install_winch();
        let mut from_master = File::from(self.master.try_clone().context("duplicating the pty")?);
        let out_fd = if self.ttys[1] { 1 } else { 2 };
        let (done, output_done) = std::sync::mpsc::channel();
        self.output_done = Some(output_done);
        std::thread::Builder::new()
            .name("pty-out".into())
            .spawn(move || {
                // SAFETY: stdout/stderr stay open for the process's life; ManuallyDrop keeps
                // this File from closing them.
                let mut out = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(out_fd) });
                let mut buf = [0u8; 8192];
                // EIO once every slave descriptor is closed: the sandbox is gone.
                while let Ok(n) = from_master.read(&mut buf) {
                    if n == 0 || out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = done.send(());
            })
            .context("starting the pty output copier")?;
        if self.ttys[0] {
            let mut to_master = File::from(self.master.try_clone().context("duplicating the pty")?);
            std::thread::Builder::new()
                .name("pty-in".into())
                .spawn(move || {
                    // SAFETY: as above, for stdin.
                    let mut input = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = input.read(&mut buf) {
                        if n == 0
                            || DONE.load(Ordering::SeqCst)
                            || to_master.write_all(&buf[..n]).is_err()
                        {
                            break;
                        }
                    }
                })
                .context("starting the pty input copier")?;
        }
        Ok(())
    }
}

impl Drop for Relay {
    /// Waits (bounded) for the sandbox's last output, then gives the invoking terminal its
    /// mode back, so egressd's summary comes after the command's output, on a sane terminal.
    fn drop(&mut self) {
        if let Some(done) = &self.output_done {
            let _ = done.recv_timeout(DRAIN);
        }
        DONE.store(true, Ordering::SeqCst);
        MASTER.store(-1, Ordering::SeqCst);
        if let Some((fd, saved)) = &self.saved {
            // SAFETY: the descriptor is egressd's stdin, open for the process's life.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
            let _ = termios::tcsetattr(fd, SetArg::TCSADRAIN, saved);
        }
    }
}

/// Copies the window size of terminal `from` to the pseudo-terminal `to`.
fn copy_window_size(from: RawFd, to: RawFd) {
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ read and write a winsize struct we own.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut size) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &size);
        }
    }
}

extern "C" fn on_winch(_: libc::c_int) {
    let master = MASTER.load(Ordering::SeqCst);
    if master >= 0 {
        // The kernel sends SIGWINCH to the sandbox's foreground group when the size changes.
        let from = if is_tty(0) {
            0
        } else if is_tty(1) {
            1
        } else {
            2
        };
        copy_window_size(from, master);
    }
}

fn install_winch() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_winch),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only makes ioctl calls, which are async-signal-safe.
    let _ = unsafe { sigaction(Signal::SIGWINCH, &action) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_terminal_no_relay() {
        // Under CI no standard descriptor is a terminal: no relay. Where one is, a relay.
        let any = (0..3).any(super::is_tty);
        let relay = super::Relay::open_if_terminal(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
        .unwrap();
        assert_eq!(relay.is_some(), any);
    }
}
