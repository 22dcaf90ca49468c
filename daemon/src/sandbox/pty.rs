//! The sandbox's terminal: a new pseudo-terminal relayed to the invoking one.
//!
//! When egressd's stdin, stdout or stderr is a terminal, the sandbox does not get it: a
//! program holding the invoking terminal can push keystrokes into it (`TIOCSTI`), or make
//! the terminal answer escape sequences into its input, and either runs in the invoking
//! shell after egressd exits, outside the sandbox. So, as `sudo` with `use_pty` and
//! `su --pty` do, the sandbox gets a pseudo-terminal of its own and egressd copies bytes
//! between it and the invoking terminal (in raw mode); window size changes follow
//! (SIGWINCH), and Ctrl-C reaches the sandbox through the line discipline.
//!
//! The pseudo-terminal comes from a devpts instance of the sandbox's own, mounted over its
//! `/dev/pts` by its init ([`in_sandbox`]): the sandbox sees its terminal and no other, so a
//! command running as the invoking user cannot open that user's other terminals by path
//! either. The init hands the master side to egressd over a socket pair made before the
//! sandbox starts ([`Pending`]), and waits for egressd to have set the window size before
//! the command starts.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    sync::atomic::{AtomicBool, AtomicI32, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use nix::sys::termios::{self, SetArg, Termios};

/// The descriptor number the socket to egressd has in the sandbox's init.
pub const INIT_SOCKET_FD: RawFd = 3;

/// How long egressd waits for the sandbox's init to send its terminal.
const HANDOVER: Duration = Duration::from_secs(10);

/// How long the end of a run waits for the sandbox's last output to be copied (it is all in
/// the pseudo-terminal's buffer once the sandbox has exited).
const DRAIN: Duration = Duration::from_secs(2);

/// The master's descriptor, for the SIGWINCH handler.
static MASTER: AtomicI32 = AtomicI32::new(-1);
/// Set once the relay is over, so the stdin copier stops writing.
static DONE: AtomicBool = AtomicBool::new(false);

fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// A terminal the sandbox will make: the socket pair to its init, before it starts.
#[derive(Debug)]
pub struct Pending {
    ours: UnixStream,
    theirs: UnixStream,
    ttys: [bool; 3],
}

impl Pending {
    /// A pending terminal if any of stdin, stdout and stderr is a terminal; `None` otherwise.
    pub fn prepare() -> anyhow::Result<Option<Self>> {
        let ttys = [is_tty(0), is_tty(1), is_tty(2)];
        if !ttys.iter().any(|t| *t) {
            return Ok(None);
        }
        let (ours, theirs) = UnixStream::pair().context("making the terminal's socket pair")?;
        Ok(Some(Self { ours, theirs, ttys }))
    }

    /// The init's end of the socket pair (installed as [`INIT_SOCKET_FD`] in it).
    pub fn init_socket(&self) -> RawFd {
        self.theirs.as_raw_fd()
    }

    /// Which of stdin, stdout and stderr get the sandbox's terminal, for the init's
    /// `--pty` (`0,1,2`).
    pub fn stdio_arg(&self) -> String {
        (0..3)
            .filter(|i| self.ttys[*i])
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Once the sandbox has started: receives the master side from its init, gives it the
    /// invoking terminal's size, lets the init go on, puts the invoking terminal in raw
    /// mode and starts copying.
    pub fn connect(self) -> anyhow::Result<Relay> {
        let Self { ours, theirs, ttys } = self;
        // Only the init holds its end now: if it dies, the read below sees end-of-file.
        drop(theirs);
        ours.set_read_timeout(Some(HANDOVER))?;
        let master = receive_fd(&ours).context("receiving the sandbox's terminal")?;
        if let Some(fd) = (0..3).find(|fd| ttys[*fd as usize]) {
            copy_window_size(fd, master.as_raw_fd());
        }
        (&ours)
            .write_all(b"1")
            .context("letting the sandbox's init go on")?;
        let mut relay = Relay {
            master,
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
        relay.start()?;
        Ok(relay)
    }
}

/// The relay of one run; the invoking terminal gets its mode back on drop.
pub struct Relay {
    /// The master side.
    master: OwnedFd,
    /// Which of stdin, stdout, stderr were terminals.
    ttys: [bool; 3],
    /// The invoking terminal's mode before raw mode, restored on drop.
    saved: Option<(RawFd, Termios)>,
    /// Signalled when the output copier has written the sandbox's last bytes.
    output_done: Option<std::sync::mpsc::Receiver<()>>,
}

impl Relay {
    /// Starts copying: the invoking terminal's input to the master, the master's output to
    /// the invoking terminal. The copiers end when the sandbox closes its last descriptor
    /// of the slave.
    fn start(&mut self) -> anyhow::Result<()> {
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
            // TCSAFLUSH: input the sandbox may have provoked (terminal replies) is dropped.
            let _ = termios::tcsetattr(fd, SetArg::TCSAFLUSH, saved);
        }
    }
}

/// In the sandbox's init, as root, in its own mount namespace, before the privilege drop:
/// mounts a devpts instance of its own over `/dev/pts` (its `ptmx` over `/dev/ptmx`), opens
/// a pseudo-terminal there for `uid` (group `tty`, as a login's), sends the master to egressd over
/// [`INIT_SOCKET_FD`], waits for egressd's go-ahead, and installs the slave as the
/// descriptors of `stdio` (`0,1,2`).
pub fn in_sandbox(stdio: &str, uid: u32) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    let tty_gid = nix::unistd::Group::from_name("tty")
        .ok()
        .flatten()
        .map_or(5, |g| g.gid.as_raw());
    let options = format!("newinstance,ptmxmode=0666,mode=0620,gid={tty_gid}");
    mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(|e| format!("mounting the sandbox's /dev/pts: {e}"))?;
    // /dev/ptmx: a device node here (a symlink to pts/ptmx already does the right thing).
    if std::fs::symlink_metadata("/dev/ptmx").is_ok_and(|m| !m.file_type().is_symlink()) {
        mount(
            Some("/dev/pts/ptmx"),
            "/dev/ptmx",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("binding the sandbox's ptmx over /dev/ptmx: {e}"))?;
    }
    let master = nix::fcntl::open(
        "/dev/pts/ptmx",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("opening the sandbox's ptmx: {e}"))?;
    // SAFETY: TIOCSPTLCK takes a pointer to an int; TIOCGPTPEER returns a new descriptor.
    let slave = unsafe {
        let unlock: libc::c_int = 0;
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(format!(
                "unlocking the pseudo-terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
        let fd = libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY,
        );
        if fd < 0 {
            return Err(format!(
                "opening the pseudo-terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
        OwnedFd::from_raw_fd(fd)
    };
    // The command's own terminal, as a login's: programs that reopen it by name can.
    nix::unistd::fchown(
        &slave,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(tty_gid)),
    )
    .map_err(|e| format!("giving the terminal to the command's user: {e}"))?;
    // SAFETY: the daemon installed the socket at this number before executing the init.
    let socket = unsafe { UnixStream::from_raw_fd(INIT_SOCKET_FD) };
    send_fd(&socket, &master).map_err(|e| format!("handing the terminal to egressd: {e}"))?;
    let mut go = [0u8; 1];
    (&socket)
        .read_exact(&mut go)
        .map_err(|e| format!("waiting for egressd to relay the terminal: {e}"))?;
    drop(socket);
    drop(master);
    for part in stdio.split(',').filter(|p| !p.is_empty()) {
        let target: RawFd = part
            .parse()
            .ok()
            .filter(|fd| (0..3).contains(fd))
            .ok_or_else(|| format!("--pty {stdio:?}: expected descriptors 0, 1 or 2"))?;
        // SAFETY: dup2 onto a standard descriptor this process owns.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(format!(
                "installing the terminal as descriptor {target}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Sends `fd` over `socket` (`SCM_RIGHTS`), with one byte of data.
fn send_fd(socket: &UnixStream, fd: &OwnedFd) -> nix::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [fd.as_raw_fd()];
    let data = [std::io::IoSlice::new(b"m")];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &data,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Receives one descriptor sent with [`send_fd`].
fn receive_fd(socket: &UnixStream) -> anyhow::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut byte = [0u8; 1];
    let mut data = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        socket.as_fd().as_raw_fd(),
        &mut data,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("the sandbox's init did not send its terminal")?;
    for cmsg in msg.cmsgs().context("reading the control message")? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor for us.
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    anyhow::bail!("the sandbox's init closed its socket without sending its terminal")
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
    use super::*;

    #[test]
    fn no_terminal_no_relay() {
        // Under CI no standard descriptor is a terminal: nothing pending. Where one is, the
        // pending terminal names exactly those.
        let any = (0..3).any(is_tty);
        let pending = Pending::prepare().unwrap();
        assert_eq!(pending.is_some(), any);
    }

    #[test]
    fn a_descriptor_crosses_the_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let file: OwnedFd = File::open("/proc/self/status").unwrap().into();
        send_fd(&a, &file).unwrap();
        let got = receive_fd(&b).unwrap();
        let mut text = String::new();
        File::from(got).read_to_string(&mut text).unwrap();
        assert!(text.contains("Name:"));
    }
}
