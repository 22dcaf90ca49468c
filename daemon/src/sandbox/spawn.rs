//! Starts the sandbox's PID 1 (`egressd __sandbox-init`) in new PID, mount and IPC namespaces,
//! inside the sandbox cgroup and network namespace.
//!
//! The child joins the cgroup and the network namespace *before* it executes anything, so
//! no instruction of the sandboxed program ever runs unconfined. Between `clone` and
//! `execve` the child only makes raw system calls on data prepared in advance (the parent
//! is multi-threaded, so nothing that may allocate or lock is safe there).

use std::{
    ffi::{CString, OsString},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::ffi::OsStringExt as _,
    },
    path::Path,
};

use anyhow::Context as _;
use nix::{sched::CloneFlags, unistd::Pid};

/// What the sandbox's PID 1 needs.
pub struct Spec<'a> {
    /// `cgroup.procs` of the sandbox cgroup.
    pub cgroup_procs: &'a Path,
    /// More `cgroup.procs` files to join (the v1 hierarchies of the resource limits).
    pub extra_procs: &'a [std::path::PathBuf],
    /// The network namespace to enter (`None`: stay in the host's).
    pub netns: Option<&'a OwnedFd>,
    /// User and group the command runs as.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// The command and its arguments.
    pub command: &'a [String],
    /// The complete environment of the command.
    pub env: Vec<(OsString, OsString)>,
    /// The init's end of the terminal's socket pair (`pty::Pending`), installed as
    /// `pty::INIT_SOCKET_FD`, and which standard descriptors get the terminal (`0,1,2`).
    pub pty: Option<(i32, String)>,
    /// The file holding the confinement plan for the init.
    pub confine: Option<&'a Path>,
    /// The compiled seccomp filter for the command (`Program::to_arg`).
    pub seccomp: Option<String>,
}

/// Starts PID 1 of the sandbox and returns its pid (in our namespace).
pub fn spawn(spec: Spec<'_>) -> anyhow::Result<Pid> {
    let exe = std::env::current_exe().context("finding egressd's own executable")?;
    let exe =
        CString::new(exe.into_os_string().into_vec()).context("egressd's path contains NUL")?;
    let procs: Vec<CString> = std::iter::once(spec.cgroup_procs)
        .chain(spec.extra_procs.iter().map(std::path::PathBuf::as_path))
        .map(|p| CString::new(p.as_os_str().as_encoded_bytes()).context("cgroup path contains NUL"))
        .collect::<anyhow::Result<_>>()?;
    let mut argv: Vec<CString> = ["egressd", "__sandbox-init", "--uid"]
        .into_iter()
        .map(|s| CString::new(s).expect("static strings have no NUL"))
        .collect();
    argv.push(CString::new(spec.uid.to_string()).expect("digits have no NUL"));
    argv.push(CString::new("--gid").expect("static"));
    argv.push(CString::new(spec.gid.to_string()).expect("digits have no NUL"));
    if let Some((_, stdio)) = &spec.pty {
        argv.push(CString::new("--pty").expect("static"));
        argv.push(CString::new(stdio.as_bytes()).context("the --pty list contains NUL")?);
    }
    if let Some(plan) = spec.confine {
        argv.push(CString::new("--confine").expect("static"));
        argv.push(
            CString::new(plan.as_os_str().as_encoded_bytes())
                .context("the confinement plan's path contains NUL")?,
        );
    }
    if let Some(filter) = &spec.seccomp {
        argv.push(CString::new("--seccomp-bpf").expect("static"));
        argv.push(CString::new(filter.as_bytes()).context("the seccomp filter contains NUL")?);
    }
    argv.push(CString::new("--").expect("static"));
    for arg in spec.command {
        argv.push(
            CString::new(arg.as_bytes())
                .with_context(|| format!("argument {arg:?} contains NUL"))?,
        );
    }
    let envp: Vec<CString> = spec
        .env
        .into_iter()
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect();
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_ptrs: Vec<*const libc::c_char> = envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let netns_fd = spec.netns.map(|fd| fd.as_raw_fd());
    let pty_socket = spec.pty.as_ref().map(|(fd, _)| *fd);

    let child = move || -> isize {
        // SAFETY: only async-signal-safe system calls on memory prepared before clone.
        unsafe { child_main(&procs, netns_fd, pty_socket, &exe, &argv_ptrs, &envp_ptrs) }
    };
    let mut stack = vec![0u8; 1 << 20];
    // An IPC namespace of its own: no SysV shared memory, semaphores or message queues of
    // the host's processes (an X server's MIT-SHM segments, say).
    let flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC;
    // SAFETY: the closure only makes raw system calls (see child_main) and never returns
    // into Rust code that could touch state shared with the parent's other threads.
    let pid = unsafe { nix::sched::clone(Box::new(child), &mut stack, flags, Some(libc::SIGCHLD)) }
        .context("starting the sandbox (clone with new PID and mount namespaces)")?;
    Ok(pid)
}

/// The child between `clone` and `execve`. Exits 125 with a message on any failure.
unsafe fn child_main(
    procs: &[CString],
    netns: Option<i32>,
    pty_socket: Option<i32>,
    exe: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> isize {
    // SAFETY (whole body): raw system calls with valid, NUL-terminated, pre-built data.
    unsafe {
        // Die with the daemon: without it nothing would answer the redirected connects.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        for file in procs {
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(b"egressd: sandbox: cannot join the sandbox cgroup\n");
            }
            libc::close(fd);
        }
        if let Some(ns) = netns
            && libc::setns(ns, libc::CLONE_NEWNET) != 0
        {
            fail(b"egressd: sandbox: cannot enter the sandbox network namespace\n");
        }
        if let Some(fd) = pty_socket {
            let target = crate::sandbox::pty::INIT_SOCKET_FD;
            // dup2 onto itself would keep close-on-exec: clear it then.
            let ok = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) == target
            };
            if !ok {
                fail(b"egressd: sandbox: cannot pass the terminal's socket to the sandbox\n");
            }
        }
        libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(b"egressd: sandbox: cannot execute egressd's sandbox init\n")
    }
}

fn fail(message: &[u8]) -> ! {
    // SAFETY: write and _exit are async-signal-safe; the buffer is valid.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(125)
    }
}
