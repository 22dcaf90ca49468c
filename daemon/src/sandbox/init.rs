//! `egressd __sandbox-init`: PID 1 of the sandbox's PID namespace.
//!
//! It runs already inside the sandbox cgroup and network namespace. It mounts a /proc
//! that shows only the sandbox's processes (so the sandbox cannot read the daemon's
//! `/proc/PID/environ`), drops to the target user with `no_new_privs` (so `sudo` and other
//! setuid programs cannot bring root back), starts the command, forwards signals to it,
//! reaps orphans, and exits with the command's status. When it exits the kernel kills
//! everything else in the namespace.

use std::{
    ffi::CString,
    process::ExitCode,
    sync::atomic::{AtomicI32, Ordering},
};

use nix::{
    mount::{MsFlags, mount},
    sys::{
        signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction},
        wait::{WaitStatus, waitpid},
    },
    unistd::{ForkResult, Gid, Pid, Uid, execvp, fork, setgid, setgroups, setuid},
};

use crate::cli::SandboxInitArgs;

/// The command's pid, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Signals passed on to the command.
const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Runs PID 1; never returns before the command has exited.
pub fn run(args: &SandboxInitArgs) -> ExitCode {
    match setup(args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("egressd: sandbox: {e}");
            return ExitCode::from(crate::EXIT_SETUP);
        }
    }
    let argv: Vec<CString> = match args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect()
    {
        Ok(v) => v,
        Err(_) => {
            eprintln!("egressd: sandbox: an argument contains a NUL byte");
            return ExitCode::from(crate::EXIT_USAGE);
        }
    };
    let filter = match args
        .seccomp_bpf
        .as_deref()
        .map(super::seccomp::Program::from_arg)
    {
        None => None,
        Some(Ok(program)) => Some(program),
        Some(Err(e)) => {
            eprintln!("egressd: sandbox: reading the seccomp filter: {e}");
            return ExitCode::from(crate::EXIT_SETUP);
        }
    };
    // SAFETY: this process is single-threaded (a fresh exec), so fork is safe.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            foreground();
            // The filter goes on the command alone (PID 1 reaps whatever a strict user
            // profile allows); never run the command unfiltered.
            if let Some(program) = &filter
                && let Err(e) = super::seccomp::apply(program)
            {
                eprintln!("egressd: sandbox: installing the seccomp filter: {e}");
                // SAFETY: leave without running the parent's destructors.
                unsafe { libc::_exit(126) }
            }
            let err = execvp(&argv[0], &argv).unwrap_err();
            eprintln!("egressd: cannot run {:?}: {err}", args.command[0]);
            let code = if err == nix::errno::Errno::ENOENT {
                127
            } else {
                126
            };
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            CHILD.store(child.as_raw(), Ordering::SeqCst);
            ExitCode::from(reap_until(child))
        }
        Err(e) => {
            eprintln!("egressd: sandbox: fork failed: {e}");
            ExitCode::from(crate::EXIT_SETUP)
        }
    }
}

/// The first of stdin, stdout and stderr that is a terminal.
fn terminal_fd() -> Option<i32> {
    // SAFETY: isatty only inspects the descriptor.
    (0..3).find(|fd| unsafe { libc::isatty(*fd) } == 1)
}

/// In the command's process, before `execve`: a process group of its own, in the foreground
/// of the sandbox's terminal, so that the terminal's signals (Ctrl-C) reach the command and
/// not the init that forwards egressd's.
fn foreground() {
    // SAFETY: plain system calls in a single-threaded child; SIGTTOU is blocked around
    // tcsetpgrp so that a background group may take the terminal.
    unsafe {
        libc::setpgid(0, 0);
        if let Some(fd) = terminal_fd() {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTTOU);
            libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
            libc::tcsetpgrp(fd, libc::getpid());
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
    }
}

/// Starts a new session; when one of stdin, stdout and stderr is a terminal (only egressd's
/// relayed pseudo-terminal can be: the invoking terminal is never passed in), makes it the
/// session's controlling terminal.
fn new_session() -> Result<(), String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    if let Some(fd) = terminal_fd() {
        // SAFETY: plain ioctl on a descriptor we own; TIOCSCTTY takes an int argument.
        if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } != 0 {
            return Err(format!(
                "making the terminal the sandbox's own: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn setup(args: &SandboxInitArgs) -> Result<(), String> {
    // Our mounts must not propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making the mount namespace private: {e}"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mounting /proc for the sandbox's PID namespace: {e}"))?;

    // Private /run, host sockets covered, --hide paths hidden.
    let plan = match &args.confine {
        Some(path) => Some(super::confine::read_plan(path)?),
        None => None,
    };
    if let Some(plan) = &plan {
        for note in super::confine::apply(plan)? {
            eprintln!("egressd: {note}");
        }
    }

    // The sandbox's own terminal, in a devpts instance of its own (uses descriptor 3).
    if let Some(stdio) = &args.pty {
        super::pty::in_sandbox(stdio, args.uid)?;
    }

    // Close every descriptor the daemon might have leaked, except stdio.
    // SAFETY: plain system call; no Rust object owns descriptors >= 3 in this process.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } != 0 {
        // Kernels before 5.9: close them one by one.
        let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .map_err(|e| format!("listing open descriptors: {e}"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd >= 3)
            .collect();
        for fd in open {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }

    // A session of its own: no controlling terminal but the pseudo-terminal egressd relays
    // (if any), so nothing in the sandbox can push input into the invoking terminal.
    new_session()?;

    let gid = Gid::from_raw(args.gid);
    let uid = Uid::from_raw(args.uid);
    setgroups(&[gid]).map_err(|e| format!("setgroups({gid}): {e}"))?;
    setgid(gid).map_err(|e| format!("setgid({gid}): {e}"))?;
    setuid(uid).map_err(|e| format!("setuid({uid}): {e}"))?;
    // SAFETY: plain prctl calls.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!(
                "setting no_new_privs: {}",
                std::io::Error::last_os_error()
            ));
        }
        // Changing credentials cleared the parent-death signal; set it again.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    // Abstract Unix sockets outside the sandbox out of reach (Linux 6.12+). Asked for only
    // where the kernel has it, so not getting it is an error, never a silent gap.
    if plan.as_ref().is_some_and(|p| p.scope_abstract) && !super::confine::scope_abstract_sockets()
    {
        return Err(
            "Landlock did not scope abstract Unix sockets although the kernel offers it (a \
             nesting limit of an outer sandbox?); with --netns new (the default) the sandbox's \
             abstract sockets are its own without Landlock"
                .into(),
        );
    }

    let action = SigAction::new(
        SigHandler::Handler(forward),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in FORWARDED {
        // SAFETY: `forward` only calls async-signal-safe functions.
        unsafe { sigaction(signal, &action) }
            .map_err(|e| format!("installing a {signal} handler: {e}"))?;
    }
    Ok(())
}

extern "C" fn forward(signal: libc::c_int) {
    let child = CHILD.load(Ordering::SeqCst);
    if child > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(child, signal) };
    }
}

/// Reaps every child until the command exits; returns its exit code (128+signal if a
/// signal killed it, as shells report it).
fn reap_until(command: Pid) -> u8 {
    loop {
        match waitpid(None, Some(nix::sys::wait::WaitPidFlag::WUNTRACED)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => return code as u8,
            // Stopped (Ctrl-Z on the sandbox's terminal): nothing outside the sandbox could
            // ever continue it, so it goes on at once instead of hanging the run.
            Ok(WaitStatus::Stopped(pid, _)) if pid == command => {
                // The whole group the terminal stopped (the command leads it).
                let _ = kill(Pid::from_raw(-command.as_raw()), Signal::SIGCONT);
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                return 128u8.wrapping_add(signal as u8);
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => {
                // No children left at all: the command is gone.
                let _ = kill(command, None);
                return crate::EXIT_SETUP;
            }
        }
    }
}
