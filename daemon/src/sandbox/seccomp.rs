//! The seccomp filter of the sandboxed command (`--seccomp default|off|FILE`).
//!
//! The daemon compiles the profile ([`compile`]) before anything starts, so a bad FILE is
//! reported with its name (and line:column for JSON syntax). The compiled BPF travels to
//! `egressd __sandbox-init` as one text argument ([`Program::to_arg`]), and init installs
//! it ([`apply`]) in the command's process right before `execve`, after
//! `PR_SET_NO_NEW_PRIVS`. So init installs exactly the instructions the daemon validated:
//! it never re-reads FILE (which could have changed since, or be unreadable from inside the
//! sandbox), needs no descriptor to survive its `close_range`, and cannot fail on a profile
//! error halfway through starting the sandbox. A filter is at most 4096 instructions (the
//! kernel's limit), so the argument is at most 64 KiB of hex, under the kernel's 128 KiB
//! for one argument.
//!
//! The BPF comes from `seccompiler` (rust-vmm, written for Firecracker, which runs it in
//! production): pure Rust, so no libseccomp C library to link or ship, and a small code
//! generator for 64-bit argument comparisons. Its own JSON front end reads another format,
//! so the Docker/OCI format is parsed here.
//!
//! One seccompiler filter has one "match" and one "mismatch" action, so a profile with
//! several actions is compiled into several parts, chained into one program: for each
//! action A other than the default, a part answering A when one of A's rules matches; when
//! the default D is not "allow", a part answering D when no rule at all matches. The parts
//! run strictest action first (kill process, kill thread, trap, errno, trace, log: the
//! kernel's order), and a part's "allow" jumps to the next part. So a call gets the
//! strictest action among the rules it matches, or D when none does; between two errno
//! rules that both match, the one that comes first in the file wins. (One program rather
//! than a stack of filters: after a first, default-deny filter, `seccomp()` itself could be
//! refused before the rest is installed.)
//!
//! The program starts with egressd's own guard: kill the process on a foreign
//! architecture (i386 through `int 0x80` on x86_64, arm32 on aarch64: their numbers
//! differ, and i386's `socketcall` would get around the socket rules), and on x86_64
//! answer ENOSYS to x32 calls (numbers with bit 30 set carry the x86_64 audit
//! architecture, so no per-number rule would match them), as a kernel without x32 does.
//!
//! seccomp sees system calls, not the operations io_uring runs for a process, and
//! `IORING_OP_SOCKET` (Linux 5.19+) creates a socket of any family without `socket(2)`: so
//! the default profile answers `io_uring_setup` with ENOSYS (as Docker's refuses io_uring),
//! and a profile that allows io_uring makes the family rule a hurdle, not a wall. Docker
//! files' `caps` conditions are
//! read as "the command holds no capability", which is true when the sandbox runs it as a
//! user other than root.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch, sock_filter,
};
use serde::Deserialize;

/// `--seccomp`: which filter the command runs under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Profile {
    /// egressd's default profile (see [`DEFAULT_RULES`]).
    Default,
    /// No filter.
    Off,
    /// A Docker/OCI JSON profile (`docker run --security-opt seccomp=FILE`).
    Oci(PathBuf),
}

impl FromStr for Profile {
    type Err = String;

    /// `default`, `off`, or a path (write `./default` for a file named `default`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("expected default, off, or a JSON profile file".into()),
            "default" => Ok(Self::Default),
            "off" => Ok(Self::Off),
            path => Ok(Self::Oci(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Off => f.write_str("off"),
            Self::Oci(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why a profile could not be compiled, or compiled arguments could not be read back.
#[derive(Debug)]
pub enum Error {
    /// No syscall table (and so no profile) for this architecture.
    UnsupportedArch(&'static str),
    /// FILE could not be read.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// FILE is not valid JSON, or does not have the profile's shape.
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// FILE asks for something egressd cannot do; `entry` is the index in `syscalls`.
    Profile {
        path: PathBuf,
        entry: Option<usize>,
        message: String,
    },
    /// The default profile failed to compile (a bug).
    Internal(String),
    /// A `to_arg` string that does not decode.
    Encoding(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedArch(arch) => write!(
                f,
                "no default profile for {arch} (egressd has seccomp profiles for x86_64 and aarch64 only)"
            ),
            Self::Read { path, source } => {
                write!(f, "reading seccomp profile {}: {source}", path.display())
            }
            Self::Json {
                path,
                line,
                column,
                message,
            } => write!(f, "{}:{line}:{column}: {message}", path.display()),
            Self::Profile {
                path,
                entry: Some(i),
                message,
            } => write!(f, "{}: syscalls[{i}]: {message}", path.display()),
            Self::Profile {
                path,
                entry: None,
                message,
            } => write!(f, "{}: {message}", path.display()),
            Self::Internal(message) => write!(f, "default seccomp profile: {message}"),
            Self::Encoding(message) => write!(f, "malformed seccomp filter argument: {message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A compiled profile: one BPF program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// `SECCOMP_FILTER_FLAG_*` passed to `seccomp(2)`.
    flags: u32,
    code: Vec<sock_filter>,
    warnings: Vec<String>,
}

/// The kernel's limit on one filter (`BPF_MAXINSNS`).
const MAX_FILTER_LEN: usize = 4096;

impl Program {
    /// The text argument for `__sandbox-init`: `FLAGS:HEX`, each instruction as 16 hex
    /// digits (code, jt, jf, k).
    pub fn to_arg(&self) -> String {
        let mut s = format!("{}:", self.flags);
        for i in &self.code {
            s.push_str(&format!(
                "{:04x}{:02x}{:02x}{:08x}",
                i.code, i.jt, i.jf, i.k
            ));
        }
        s
    }

    /// Reads back [`Program::to_arg`]. The kernel checks the BPF itself when it is installed.
    pub fn from_arg(arg: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Encoding(why.to_string());
        let (flags, hex) = arg.split_once(':').ok_or_else(|| bad("no FLAGS: prefix"))?;
        let flags: u32 = flags.parse().map_err(|_| bad("FLAGS is not a number"))?;
        if hex.is_empty() || hex.len() % 16 != 0 || hex.len() / 16 > MAX_FILTER_LEN {
            return Err(bad("not 1 to 4096 instructions of 16 hex digits"));
        }
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("not hexadecimal"));
        }
        // ASCII hex digits only, so every slice is on a character boundary and parses.
        let field =
            |at: usize, len: usize| u32::from_str_radix(&hex[at..at + len], 16).unwrap_or(0);
        let code = (0..hex.len())
            .step_by(16)
            .map(|at| sock_filter {
                code: field(at, 4) as u16,
                jt: field(at + 4, 2) as u8,
                jf: field(at + 6, 2) as u8,
                k: field(at + 8, 8),
            })
            .collect();
        Ok(Self {
            flags,
            code,
            warnings: Vec::new(),
        })
    }

    /// For the daemon to log: syscall names in FILE that are no system call on any
    /// architecture egressd knows (a typo would leave a rule without effect).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Number of BPF instructions, for logging.
    pub fn instructions(&self) -> usize {
        self.code.len()
    }
}

/// Installs `program` in the calling thread (inherited by its children and kept across
/// `execve`). Sets `PR_SET_NO_NEW_PRIVS` first (the kernel requires it, or
/// `CAP_SYS_ADMIN`). Allocates nothing, so it is safe between `fork` and `execve` even in
/// a multi-threaded process. On error, do not run the command.
pub fn apply(program: &Program) -> std::io::Result<()> {
    const _: () = assert!(size_of::<sock_filter>() == size_of::<libc::sock_filter>());
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let prog = libc::sock_fprog {
        // Fits: from_arg and compile keep a program at most MAX_FILTER_LEN long.
        len: program.code.len() as u16,
        filter: program.code.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: `prog` points at `len` instructions laid out as the kernel's `struct
    // sock_filter` (same repr(C) fields, size checked above); the kernel copies them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::c_ulong::from(program.flags),
            &raw const prog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Compiles `profile` for the running architecture; `None` for [`Profile::Off`].
pub fn compile(profile: &Profile) -> Result<Option<Program>, Error> {
    match profile {
        Profile::Off => Ok(None),
        Profile::Default => compile_default(Arch::native()?).map(Some),
        Profile::Oci(path) => {
            let arch = Arch::native()?;
            let text = std::fs::read(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            compile_oci(&text, path, arch, kernel_version()).map(Some)
        }
    }
}

// ----------------------------------------------------------------------------------------
// Architectures and system call numbers.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    X86_64,
    Aarch64,
}

/// `AUDIT_ARCH_X86_64` and `AUDIT_ARCH_AARCH64` (linux/audit.h).
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
/// x86_64's x32 ABI marks its system call numbers with this bit.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

impl Arch {
    fn native() -> Result<Self, Error> {
        if cfg!(target_arch = "x86_64") {
            Ok(Self::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Ok(Self::Aarch64)
        } else {
            Err(Error::UnsupportedArch(std::env::consts::ARCH))
        }
    }

    fn target(self) -> TargetArch {
        match self {
            Self::X86_64 => TargetArch::x86_64,
            Self::Aarch64 => TargetArch::aarch64,
        }
    }

    fn audit(self) -> u32 {
        match self {
            Self::X86_64 => AUDIT_ARCH_X86_64,
            Self::Aarch64 => AUDIT_ARCH_AARCH64,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    /// Names Docker profiles use for this architecture in `includes`/`excludes` `arches`
    /// (Go's, plus the kernel's for good measure).
    fn profile_names(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &["amd64", "x86_64"],
            Self::Aarch64 => &["arm64", "aarch64"],
        }
    }

    fn table(self) -> HashMap<&'static str, i64> {
        let own = match self {
            Self::X86_64 => X86_64_TABLE,
            Self::Aarch64 => AARCH64_TABLE,
        };
        let mut map = HashMap::new();
        for line in own.lines().chain(GENERIC_TABLE.lines()) {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            let first: i64 = first
                .parse()
                .expect("a table line starts with its first number");
            map.extend(words.zip(first..));
        }
        map
    }
}

/// x86_64 system calls below 424 (arch/x86/entry/syscalls/syscall_64.tbl): each line is a
/// number, then the names of that number and the following ones.
const X86_64_TABLE: &str = "
0 read write open close stat fstat lstat poll lseek mmap mprotect munmap brk rt_sigaction
14 rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64 readv writev access pipe select
24 sched_yield mremap msync mincore madvise shmget shmat shmctl dup dup2 pause nanosleep
36 getitimer alarm setitimer getpid sendfile socket connect accept sendto recvfrom sendmsg
47 recvmsg shutdown bind listen getsockname getpeername socketpair setsockopt getsockopt
56 clone fork vfork execve exit wait4 kill uname semget semop semctl shmdt msgget msgsnd
70 msgrcv msgctl fcntl flock fsync fdatasync truncate ftruncate getdents getcwd chdir fchdir
82 rename mkdir rmdir creat link unlink symlink readlink chmod fchmod chown fchown lchown
95 umask gettimeofday getrlimit getrusage sysinfo times ptrace getuid syslog getgid setuid
106 setgid geteuid getegid setpgid getppid getpgrp setsid setreuid setregid getgroups
116 setgroups setresuid getresuid setresgid getresgid getpgid setfsuid setfsgid getsid
125 capget capset rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_sigsuspend sigaltstack
132 utime mknod uselib personality ustat statfs fstatfs sysfs getpriority setpriority
142 sched_setparam sched_getparam sched_setscheduler sched_getscheduler
146 sched_get_priority_max sched_get_priority_min sched_rr_get_interval mlock munlock
151 mlockall munlockall vhangup modify_ldt pivot_root _sysctl prctl arch_prctl adjtimex
160 setrlimit chroot sync acct settimeofday mount umount2 swapon swapoff reboot sethostname
171 setdomainname iopl ioperm create_module init_module delete_module get_kernel_syms
178 query_module quotactl nfsservctl getpmsg putpmsg afs_syscall tuxcall security gettid
187 readahead setxattr lsetxattr fsetxattr getxattr lgetxattr fgetxattr listxattr llistxattr
196 flistxattr removexattr lremovexattr fremovexattr tkill time futex sched_setaffinity
204 sched_getaffinity set_thread_area io_setup io_destroy io_getevents io_submit io_cancel
211 get_thread_area lookup_dcookie epoll_create epoll_ctl_old epoll_wait_old
216 remap_file_pages getdents64 set_tid_address restart_syscall semtimedop fadvise64
222 timer_create timer_settime timer_gettime timer_getoverrun timer_delete clock_settime
228 clock_gettime clock_getres clock_nanosleep exit_group epoll_wait epoll_ctl tgkill utimes
236 vserver mbind set_mempolicy get_mempolicy mq_open mq_unlink mq_timedsend mq_timedreceive
244 mq_notify mq_getsetattr kexec_load waitid add_key request_key keyctl ioprio_set
252 ioprio_get inotify_init inotify_add_watch inotify_rm_watch migrate_pages openat mkdirat
259 mknodat fchownat futimesat newfstatat unlinkat renameat linkat symlinkat readlinkat
268 fchmodat faccessat pselect6 ppoll unshare set_robust_list get_robust_list splice tee
277 sync_file_range vmsplice move_pages utimensat epoll_pwait signalfd timerfd_create
284 eventfd fallocate timerfd_settime timerfd_gettime accept4 signalfd4 eventfd2
291 epoll_create1 dup3 pipe2 inotify_init1 preadv pwritev rt_tgsigqueueinfo perf_event_open
299 recvmmsg fanotify_init fanotify_mark prlimit64 name_to_handle_at open_by_handle_at
305 clock_adjtime syncfs sendmmsg setns getcpu process_vm_readv process_vm_writev kcmp
313 finit_module sched_setattr sched_getattr renameat2 seccomp getrandom memfd_create
320 kexec_file_load bpf execveat userfaultfd membarrier mlock2 copy_file_range preadv2
328 pwritev2 pkey_mprotect pkey_alloc pkey_free statx io_pgetevents rseq uretprobe uprobe
";

/// aarch64 system calls below 424 (include/uapi/asm-generic/unistd.h, as arm64 configures
/// it: renameat, newfstatat, getrlimit, clone3, memfd_secret); 244 to 259 are unused.
const AARCH64_TABLE: &str = "
0 io_setup io_destroy io_submit io_cancel io_getevents setxattr lsetxattr fsetxattr getxattr
9 lgetxattr fgetxattr listxattr llistxattr flistxattr removexattr lremovexattr fremovexattr
17 getcwd lookup_dcookie eventfd2 epoll_create1 epoll_ctl epoll_pwait dup dup3 fcntl
26 inotify_init1 inotify_add_watch inotify_rm_watch ioctl ioprio_set ioprio_get flock
33 mknodat mkdirat unlinkat symlinkat linkat renameat umount2 mount pivot_root nfsservctl
43 statfs fstatfs truncate ftruncate fallocate faccessat chdir fchdir chroot fchmod fchmodat
54 fchownat fchown openat close vhangup pipe2 quotactl getdents64 lseek read write readv
66 writev pread64 pwrite64 preadv pwritev sendfile pselect6 ppoll signalfd4 vmsplice splice
77 tee readlinkat newfstatat fstat sync fsync fdatasync sync_file_range timerfd_create
86 timerfd_settime timerfd_gettime utimensat acct capget capset personality exit exit_group
95 waitid set_tid_address unshare futex set_robust_list get_robust_list nanosleep getitimer
103 setitimer kexec_load init_module delete_module timer_create timer_gettime
109 timer_getoverrun timer_settime timer_delete clock_settime clock_gettime clock_getres
115 clock_nanosleep syslog ptrace sched_setparam sched_setscheduler sched_getscheduler
121 sched_getparam sched_setaffinity sched_getaffinity sched_yield sched_get_priority_max
126 sched_get_priority_min sched_rr_get_interval restart_syscall kill tkill tgkill
132 sigaltstack rt_sigsuspend rt_sigaction rt_sigprocmask rt_sigpending rt_sigtimedwait
138 rt_sigqueueinfo rt_sigreturn setpriority getpriority reboot setregid setgid setreuid
146 setuid setresuid getresuid setresgid getresgid setfsuid setfsgid times setpgid getpgid
156 getsid setsid getgroups setgroups uname sethostname setdomainname getrlimit setrlimit
165 getrusage umask prctl getcpu gettimeofday settimeofday adjtimex getpid getppid getuid
175 geteuid getgid getegid gettid sysinfo mq_open mq_unlink mq_timedsend mq_timedreceive
184 mq_notify mq_getsetattr msgget msgctl msgrcv msgsnd semget semctl semtimedop semop
194 shmget shmctl shmat shmdt socket socketpair bind listen accept connect getsockname
205 getpeername sendto recvfrom setsockopt getsockopt shutdown sendmsg recvmsg readahead brk
215 munmap mremap add_key request_key keyctl clone execve mmap fadvise64 swapon swapoff
226 mprotect msync mlock munlock mlockall munlockall mincore madvise remap_file_pages mbind
236 get_mempolicy set_mempolicy migrate_pages move_pages rt_tgsigqueueinfo perf_event_open
242 accept4 recvmmsg
260 wait4 prlimit64 fanotify_init fanotify_mark name_to_handle_at open_by_handle_at
266 clock_adjtime syncfs setns sendmmsg process_vm_readv process_vm_writev kcmp finit_module
274 sched_setattr sched_getattr renameat2 seccomp getrandom memfd_create bpf execveat
282 userfaultfd membarrier mlock2 copy_file_range preadv2 pwritev2 pkey_mprotect pkey_alloc
290 pkey_free statx io_pgetevents rseq kexec_file_load
";

/// From 424 on, every architecture numbers new system calls alike.
const GENERIC_TABLE: &str = "
424 pidfd_send_signal io_uring_setup io_uring_enter io_uring_register open_tree move_mount
430 fsopen fsconfig fsmount fspick pidfd_open clone3 close_range openat2 pidfd_getfd
439 faccessat2 process_madvise epoll_pwait2 mount_setattr quotactl_fd
444 landlock_create_ruleset landlock_add_rule landlock_restrict_self memfd_secret
448 process_mrelease futex_waitv set_mempolicy_home_node cachestat fchmodat2
453 map_shadow_stack futex_wake futex_wait futex_requeue statmount listmount
459 lsm_get_self_attr lsm_set_self_attr lsm_list_modules mseal setxattrat getxattrat
465 listxattrat removexattrat open_tree_attr file_getattr file_setattr listns
";

/// System calls of other ABIs (i386, arm, ppc, s390, riscv...) that cross-architecture
/// profiles such as Docker's list: skipped without a warning, as Docker skips them.
const FOREIGN_NAMES: &str = "
_llseek _newselect bdflush break chown32 clock_adjtime64 clock_getres_time64 clock_gettime64
clock_nanosleep_time64 clock_settime64 fadvise64_64 fchown32 fcntl64 fstat64 fstatat64
fstatfs64 ftime ftruncate64 futex_time64 getegid32 geteuid32 getgid32 getgroups32
getresgid32 getresuid32 getuid32 gtty idle io_pgetevents_time64 ipc lchown32 lock lstat64
mmap2 mpx mq_timedreceive_time64 mq_timedsend_time64 nice oldfstat oldlstat oldolduname
oldstat olduname ppoll_time64 prof profil pselect6_time64 readdir recvmmsg_time64
rt_sigtimedwait_time64 sched_rr_get_interval_time64 semtimedop_time64 sendfile64 setfsgid32
setfsuid32 setgid32 setgroups32 setregid32 setresgid32 setresuid32 setreuid32 setuid32
sgetmask sigaction signal sigpending sigprocmask sigreturn sigsuspend socketcall ssetmask
stat64 statfs64 stime stty timer_gettime64 timer_settime64 timerfd_gettime64
timerfd_settime64 truncate64 ugetrlimit ulimit umount utimensat_time64 vm86 vm86old waitpid
arm_fadvise64_64 arm_sync_file_range breakpoint cacheflush set_tls usr26 usr32 recv send
sync_file_range2 swapcontext switch_endian subpage_prot sys_debug_setcontext multiplexer
rtas spu_run spu_create s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr
s390_guarded_storage s390_sthyi riscv_flush_icache riscv_hwprobe pciconfig_iobase
pciconfig_read pciconfig_write cachectl sysmips atomic_barrier atomic_cmpxchg_32
";

// ----------------------------------------------------------------------------------------
// The profile, independent of its source, and its lowering to BPF.

/// What a matching call gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Allow,
    Errno(u32),
    Trap,
    Trace(u32),
    Log,
    KillThread,
    KillProcess,
}

impl Action {
    /// The kernel's order, strictest first (`SECCOMP_RET_ACTION_FULL` as a signed number).
    fn precedence(self) -> i32 {
        (u32::from(SeccompAction::from(self)) & 0xffff_0000) as i32
    }
}

impl From<Action> for SeccompAction {
    fn from(action: Action) -> Self {
        match action {
            Action::Allow => Self::Allow,
            Action::Errno(e) => Self::Errno(e),
            Action::Trap => Self::Trap,
            Action::Trace(d) => Self::Trace(d),
            Action::Log => Self::Log,
            Action::KillThread => Self::KillThread,
            Action::KillProcess => Self::KillProcess,
        }
    }
}

/// One comparison of a system call argument.
#[derive(Clone, Debug)]
struct Cond {
    index: u8,
    /// Dword compares the low 32 bits only: right for `int` arguments, whose upper bits
    /// the kernel ignores (and a caller could fill with anything).
    width: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
}

/// `action` for the system calls `nrs` when one of `any_of` holds (all of its
/// comparisons); always when `any_of` is empty.
#[derive(Clone, Debug)]
struct Rule {
    nrs: Vec<i64>,
    action: Action,
    any_of: Vec<Vec<Cond>>,
}

#[derive(Clone, Debug)]
struct Spec {
    default: Action,
    rules: Vec<Rule>,
    flags: u32,
}

fn lower(spec: &Spec, arch: Arch) -> Result<Vec<sock_filter>, String> {
    let mut actions: Vec<Action> = Vec::new();
    for rule in &spec.rules {
        if rule.action != spec.default
            && rule.action != Action::Allow
            && !actions.contains(&rule.action)
        {
            actions.push(rule.action);
        }
    }
    // Each part answers its action or allow; the parts run strictest first.
    let build = |rules: BTreeMap<i64, Vec<SeccompRule>>, mismatch: Action, matched: Action| {
        let filter = SeccompFilter::new(rules, mismatch.into(), matched.into(), arch.target())
            .map_err(|e| e.to_string())?;
        Vec::<sock_filter>::try_from(filter).map_err(|e| match e {
            seccompiler::BackendError::FilterTooLarge(n) => too_large(n),
            e => e.to_string(),
        })
    };
    let mut parts: Vec<(Action, Vec<sock_filter>)> = Vec::new();
    for &action in &actions {
        let matching = spec.rules.iter().filter(|r| r.action == action);
        parts.push((action, build(rule_map(matching)?, Action::Allow, action)?));
    }
    if spec.default != Action::Allow {
        // Answers the default when no rule at all matches (stricter rules ran already).
        let matching = spec.rules.iter().filter(|r| r.action != spec.default);
        parts.push((
            spec.default,
            build(rule_map(matching)?, spec.default, Action::Allow)?,
        ));
    }
    // Stable: among equals (errno against errno) the entry that came first in the file wins.
    parts.sort_by_key(|(action, _)| action.precedence());
    let mut pieces = vec![guard(arch)];
    pieces.extend(parts.into_iter().map(|(_, code)| code));
    let count = pieces.len();
    let mut code = Vec::new();
    for (i, piece) in pieces.into_iter().enumerate() {
        let len = piece.len();
        for (j, mut insn) in piece.into_iter().enumerate() {
            if i + 1 < count && insn.code == BPF_RET_K && insn.k == libc::SECCOMP_RET_ALLOW {
                // "Allow" from this part means: ask the next one (its first instruction).
                insn = sock_filter {
                    code: BPF_JA,
                    jt: 0,
                    jf: 0,
                    k: (len - j - 1) as u32,
                };
            }
            code.push(insn);
        }
    }
    if code.len() > MAX_FILTER_LEN {
        return Err(too_large(code.len()));
    }
    Ok(code)
}

fn too_large(len: usize) -> String {
    format!(
        "the profile compiles to {len} BPF instructions; the kernel takes at most \
         {MAX_FILTER_LEN} in one filter"
    )
}

/// Classic BPF opcodes used here.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JA: u16 = 0x05;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;

/// seccompiler's rule map: per system call, the alternatives (an empty list matches always).
fn rule_map<'a>(
    rules: impl Iterator<Item = &'a Rule>,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut always = BTreeSet::new();
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for rule in rules {
        for &nr in &rule.nrs {
            if rule.any_of.is_empty() {
                always.insert(nr);
                continue;
            }
            for conds in &rule.any_of {
                let conditions = conds
                    .iter()
                    .map(|c| SeccompCondition::new(c.index, c.width.clone(), c.op.clone(), c.value))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let rule = SeccompRule::new(conditions).map_err(|e| e.to_string())?;
                map.entry(nr).or_default().push(rule);
            }
        }
    }
    for nr in always {
        map.insert(nr, Vec::new());
    }
    Ok(map)
}

/// egressd's own first check: kill on a foreign architecture; on x86_64, ENOSYS for x32.
fn guard(arch: Arch) -> Vec<sock_filter> {
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let mut code = vec![
        insn(BPF_LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        insn(BPF_JEQ_K, 1, 0, arch.audit()),
        insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    if arch == Arch::X86_64 {
        code.extend([
            insn(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
            insn(BPF_JGE_K, 0, 2, X32_SYSCALL_BIT),
            // -1 is how a tracer skips a call: leave its return value alone.
            insn(BPF_JEQ_K, 1, 0, u32::MAX),
            insn(
                BPF_RET_K,
                0,
                0,
                libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
            ),
        ]);
    }
    code.push(insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
    code
}

// ----------------------------------------------------------------------------------------
// The default profile.

/// When a default rule applies.
#[derive(Clone, Copy, Debug)]
enum When {
    Always,
    /// The address family (argument 0, an `int`) is none of these.
    FamilyNotIn(&'static [u32]),
    /// The ioctl request (argument 1, an `unsigned int`) is one of these.
    RequestIn(&'static [u32]),
    /// The persona (argument 0) has one of these flags and is not 0xffffffff (a query).
    PersonaHasAny(&'static [u32]),
}

/// One refusal of the default profile. `why` is the user documentation (README table).
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    not(test),
    allow(dead_code, reason = "`why` is read by the README table test")
)]
struct DefaultRule {
    names: &'static [&'static str],
    when: When,
    errno: i32,
    why: &'static str,
}

/// The default profile: everything else is allowed. (Names that do not exist on an
/// architecture, such as `iopl` on aarch64, are skipped there.)
const DEFAULT_RULES: &[DefaultRule] = &[
    DefaultRule {
        names: &["socket", "socketpair"],
        when: When::FamilyNotIn(&[
            libc::AF_UNIX as u32,
            libc::AF_INET as u32,
            libc::AF_INET6 as u32,
            libc::AF_NETLINK as u32,
        ]),
        errno: libc::EAFNOSUPPORT,
        // AF_ALG (kernel crypto) is refused too, as Docker does: userspace crypto
        // libraries fall back on their own code when it is missing.
        why: "Address families other than Unix, IPv4, IPv6 and netlink (vsock, packet, \
              Bluetooth, CAN, TIPC, RDS, KCM, XDP, ALG, PF_KEY...) reach the host or the \
              hypervisor past the egress firewall, or are rarely used kernel code with a \
              record of exploits; the error is the one a kernel without the family gives",
    },
    DefaultRule {
        names: &["ioctl"],
        when: When::RequestIn(&[libc::TIOCSTI as u32, libc::TIOCLINUX as u32]),
        errno: libc::EPERM,
        why: "TIOCSTI types characters into a terminal and TIOCLINUX drives the console: \
              a command could type into the shell that started egressd",
    },
    DefaultRule {
        names: &["ioctl"],
        when: When::RequestIn(&[libc::TIOCSETD as u32]),
        errno: libc::EPERM,
        why: "Changing a terminal's line discipline loads rarely used kernel code (n_gsm, \
              n_hdlc...) with a record of privilege escalations; only serial-line tools use it",
    },
    DefaultRule {
        names: &["keyctl", "add_key", "request_key"],
        when: When::Always,
        errno: libc::EPERM,
        why: "Kernel keyrings are per user, not per sandbox: a command could read or plant \
              keys of the same user outside the sandbox",
    },
    DefaultRule {
        names: &["bpf"],
        when: When::Always,
        errno: libc::EPERM,
        why: "eBPF programs and maps: a large kernel attack surface, and egressd's firewall \
              is eBPF",
    },
    DefaultRule {
        names: &["perf_event_open"],
        when: When::Always,
        errno: libc::EPERM,
        why: "Performance counters: a frequent source of kernel bugs and side channels",
    },
    DefaultRule {
        names: &["io_uring_setup"],
        when: When::Always,
        errno: libc::ENOSYS,
        why: "io_uring runs operations seccomp cannot see (IORING_OP_SOCKET makes an AF_VSOCK socket without socket(2)); ENOSYS, as on a kernel without io_uring, so programs fall back to plain system calls",
    },
    DefaultRule {
        names: &["userfaultfd"],
        when: When::Always,
        errno: libc::EPERM,
        why: "Stalls kernel page faults at will: the standard tool for winning kernel races",
    },
    DefaultRule {
        names: &["kexec_load", "kexec_file_load", "reboot"],
        when: When::Always,
        errno: libc::EPERM,
        why: "Replacing or restarting the running kernel",
    },
    DefaultRule {
        names: &["init_module", "finit_module", "delete_module"],
        when: When::Always,
        errno: libc::EPERM,
        why: "Loading or unloading kernel modules",
    },
    DefaultRule {
        names: &["open_by_handle_at"],
        when: When::Always,
        errno: libc::EPERM,
        why: "Opens files by handle, around path permissions and mount boundaries (the \
              \"shocker\" container escape)",
    },
    DefaultRule {
        names: &["acct", "swapon", "swapoff", "quotactl", "quotactl_fd"],
        when: When::Always,
        errno: libc::EPERM,
        why: "Host-wide administration: process accounting, swap, filesystem quotas",
    },
    DefaultRule {
        names: &["settimeofday", "clock_settime"],
        when: When::Always,
        errno: libc::EPERM,
        why: "Setting the host's clock (reading it, and adjtimex queries, stay allowed)",
    },
    DefaultRule {
        names: &["iopl", "ioperm"],
        when: When::Always,
        errno: libc::EPERM,
        why: "Direct access to hardware I/O ports (x86_64)",
    },
    DefaultRule {
        names: &["syslog"],
        when: When::Always,
        errno: libc::EPERM,
        why: "Reading or clearing the kernel log through syslog(2): host messages and kernel \
              addresses (/dev/kmsg is left to its file mode and kernel.dmesg_restrict)",
    },
    DefaultRule {
        names: &["vhangup"],
        when: When::Always,
        errno: libc::EPERM,
        why: "Hangs up the terminal, which is the user's",
    },
    DefaultRule {
        names: &["lookup_dcookie", "nfsservctl", "uselib"],
        when: When::Always,
        errno: libc::EPERM,
        why: "Obsolete interfaces without modern users (oprofile, the old NFS server \
              control, a.out libraries)",
    },
    DefaultRule {
        names: &["personality"],
        when: When::PersonaHasAny(&[READ_IMPLIES_EXEC, MMAP_PAGE_ZERO]),
        errno: libc::EPERM,
        why: "READ_IMPLIES_EXEC and MMAP_PAGE_ZERO turn off no-execute memory or map page \
              zero (an aid to kernel NULL-pointer exploits); gdb's ASLR switch, linux32 \
              and setarch -R/-L/--uname-2.6 keep working",
    },
];

/// Persona flags (linux/personality.h).
const READ_IMPLIES_EXEC: u32 = 0x040_0000;
const MMAP_PAGE_ZERO: u32 = 0x010_0000;

fn default_spec(arch: Arch) -> Result<Spec, String> {
    let table = arch.table();
    let dword = |index, op, value| Cond {
        index,
        width: SeccompCmpArgLen::Dword,
        op,
        value,
    };
    let mut rules = Vec::new();
    for rule in DEFAULT_RULES {
        let nrs: Vec<i64> = rule
            .names
            .iter()
            .filter_map(|n| table.get(n).copied())
            .collect();
        let any_of = match rule.when {
            When::Always => Vec::new(),
            When::FamilyNotIn(families) => vec![
                families
                    .iter()
                    .map(|&f| dword(0, SeccompCmpOp::Ne, u64::from(f)))
                    .collect(),
            ],
            When::RequestIn(requests) => requests
                .iter()
                .map(|&r| vec![dword(1, SeccompCmpOp::Eq, u64::from(r))])
                .collect(),
            When::PersonaHasAny(flags) => flags
                .iter()
                .map(|&f| {
                    vec![
                        dword(0, SeccompCmpOp::MaskedEq(u64::from(f)), u64::from(f)),
                        dword(0, SeccompCmpOp::Ne, u64::from(u32::MAX)),
                    ]
                })
                .collect(),
        };
        let errno = u32::try_from(rule.errno).map_err(|_| "negative errno".to_string())?;
        rules.push(Rule {
            nrs,
            action: Action::Errno(errno),
            any_of,
        });
    }
    Ok(Spec {
        default: Action::Allow,
        rules,
        flags: 0,
    })
}

fn compile_default(arch: Arch) -> Result<Program, Error> {
    let spec = default_spec(arch).map_err(Error::Internal)?;
    let code = lower(&spec, arch).map_err(Error::Internal)?;
    Ok(Program {
        flags: spec.flags,
        code,
        warnings: Vec::new(),
    })
}

// ----------------------------------------------------------------------------------------
// Docker / OCI JSON profiles.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OciProfile {
    default_action: Option<String>,
    default_errno_ret: Option<u32>,
    architectures: Option<Vec<String>>,
    arch_map: Option<Vec<OciArchMap>>,
    flags: Option<Vec<String>>,
    listener_path: Option<String>,
    listener_metadata: Option<String>,
    syscalls: Option<Vec<OciSyscall>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OciArchMap {
    architecture: String,
    sub_architectures: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OciSyscall {
    name: Option<String>,
    names: Option<Vec<String>>,
    action: String,
    errno_ret: Option<u32>,
    args: Option<Vec<OciArg>>,
    #[serde(rename = "comment")]
    _comment: Option<String>,
    includes: Option<OciFilter>,
    excludes: Option<OciFilter>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OciArg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OciFilter {
    caps: Option<Vec<String>>,
    arches: Option<Vec<String>>,
    min_kernel: Option<String>,
}

/// Every `SCMP_ARCH_*` libseccomp knows.
const SCMP_ARCHES: &[&str] = &[
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_SH",
    "SCMP_ARCH_SHEB",
];

fn compile_oci(text: &[u8], path: &Path, arch: Arch, kernel: (u32, u32)) -> Result<Program, Error> {
    let doc: OciProfile = serde_json::from_slice(text).map_err(|e| {
        let message = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        Error::Json {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: message
                .strip_suffix(&suffix)
                .unwrap_or(&message)
                .to_string(),
        }
    })?;
    let (spec, warnings) =
        oci_spec(doc, arch, kernel).map_err(|(entry, message)| Error::Profile {
            path: path.to_path_buf(),
            entry,
            message,
        })?;
    let code = lower(&spec, arch).map_err(|message| Error::Profile {
        path: path.to_path_buf(),
        entry: None,
        message,
    })?;
    Ok(Program {
        flags: spec.flags,
        code,
        warnings,
    })
}

type OciError = (Option<usize>, String);

fn oci_action(name: &str, errno: Option<u32>) -> Result<Action, String> {
    let data = errno.unwrap_or(libc::EPERM as u32);
    let action = match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(data),
        "SCMP_ACT_TRACE" => Action::Trace(data),
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_NOTIFY" => {
            return Err("SCMP_ACT_NOTIFY (a user-space seccomp agent) is not supported".into());
        }
        other => return Err(format!("unknown action {other:?}")),
    };
    if errno.is_some() && !matches!(action, Action::Errno(_) | Action::Trace(_)) {
        return Err(format!(
            "errnoRet is only meaningful with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {name}"
        ));
    }
    if data > 4095 {
        return Err(format!("errnoRet {data} is not an errno (at most 4095)"));
    }
    Ok(action)
}

fn oci_op(op: &str, value: u64, value_two: u64) -> Result<(SeccompCmpOp, u64), String> {
    Ok(match op {
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, value),
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, value),
        // libseccomp's argument order: `value` is the mask, `valueTwo` the datum.
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(value), value_two),
        other => return Err(format!("unknown comparison {other:?}")),
    })
}

/// `"4.8"`: kernel version and major revision, as Docker reads `minKernel`.
fn parse_kernel(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.split_once('.')?;
    let version = (a.parse().ok()?, b.parse().ok()?);
    (version != (0, 0)).then_some(version)
}

fn kernel_version() -> (u32, u32) {
    // SAFETY: uname fills the zeroed struct; the release is NUL-terminated.
    let release = unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut uts) != 0 {
            return (0, 0);
        }
        std::ffi::CStr::from_ptr(uts.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Whether an entry's `includes`/`excludes` keep it here: this architecture, this kernel,
/// and a command that holds no capability (the sandbox drops to an unprivileged user).
fn oci_applies(
    includes: Option<&OciFilter>,
    excludes: Option<&OciFilter>,
    arch: Arch,
    kernel: (u32, u32),
) -> Result<bool, String> {
    let native = |arches: &[String]| arches.iter().any(|a| arch.profile_names().contains(&&**a));
    let min_kernel = |f: &OciFilter| -> Result<Option<bool>, String> {
        match f.min_kernel.as_deref() {
            None | Some("") => Ok(None),
            Some(v) => parse_kernel(v)
                .map(|min| Some(kernel >= min))
                .ok_or_else(|| {
                    format!("minKernel {v:?} is not \"<kernel>.<major>\" such as \"4.8\"")
                }),
        }
    };
    if let Some(ex) = excludes {
        if ex.arches.as_deref().is_some_and(native) {
            return Ok(false);
        }
        // `caps`: excluded when the command holds one of them; it holds none.
        if min_kernel(ex)? == Some(true) {
            return Ok(false);
        }
    }
    if let Some(inc) = includes {
        if inc
            .arches
            .as_deref()
            .is_some_and(|a| !a.is_empty() && !native(a))
        {
            return Ok(false);
        }
        // `caps`: included only when the command holds all of them; it holds none.
        if inc.caps.as_deref().is_some_and(|c| !c.is_empty()) {
            return Ok(false);
        }
        if min_kernel(inc)? == Some(false) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn oci_spec(
    doc: OciProfile,
    arch: Arch,
    kernel: (u32, u32),
) -> Result<(Spec, Vec<String>), OciError> {
    let top = |m: String| (None, m);
    if doc.listener_path.as_deref().is_some_and(|p| !p.is_empty())
        || doc
            .listener_metadata
            .as_deref()
            .is_some_and(|p| !p.is_empty())
    {
        return Err(top(
            "listenerPath (a user-space seccomp agent) is not supported".into(),
        ));
    }
    let default_action = doc.default_action.as_deref().unwrap_or("");
    if default_action.is_empty() {
        return Err(top(
            "defaultAction is missing (use --seccomp off to run without a filter)".into(),
        ));
    }
    let default = oci_action(default_action, doc.default_errno_ret)
        .map_err(|m| top(format!("defaultAction: {m}")))?;

    let architectures = doc.architectures.unwrap_or_default();
    let arch_map = doc.arch_map.unwrap_or_default();
    if !architectures.is_empty() && !arch_map.is_empty() {
        return Err(top("give either architectures or archMap, not both".into()));
    }
    // Only the native architecture is filtered (egressd kills 32-bit and x32 calls whatever
    // the profile says), but a misspelt name is still an error.
    let mut arch_names: Vec<&str> = architectures.iter().map(String::as_str).collect();
    for entry in &arch_map {
        arch_names.push(&entry.architecture);
        arch_names.extend(entry.sub_architectures.iter().flatten().map(String::as_str));
    }
    if let Some(bad) = arch_names.iter().find(|a| !SCMP_ARCHES.contains(a)) {
        return Err(top(format!("unknown architecture {bad:?}")));
    }

    let mut flags = 0u32;
    for flag in doc.flags.iter().flatten() {
        flags |= match flag.as_str() {
            // egressd installs the filter from a single-threaded process.
            "SECCOMP_FILTER_FLAG_TSYNC" => 0,
            "SECCOMP_FILTER_FLAG_LOG" => libc::SECCOMP_FILTER_FLAG_LOG as u32,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW as u32,
            other => return Err(top(format!("flag {other:?} is not supported"))),
        };
    }

    let table = arch.table();
    let other = match arch {
        Arch::X86_64 => Arch::Aarch64,
        Arch::Aarch64 => Arch::X86_64,
    }
    .table();
    let foreign: BTreeSet<&str> = FOREIGN_NAMES.split_whitespace().collect();
    let mut unknown: BTreeSet<String> = BTreeSet::new();
    let mut rules = Vec::new();
    for (i, call) in doc.syscalls.unwrap_or_default().into_iter().enumerate() {
        let at = |m: String| (Some(i), m);
        let names = match (call.name, call.names) {
            (Some(_), Some(names)) if !names.is_empty() => {
                return Err(at("give either name or names, not both".into()));
            }
            (Some(name), _) => vec![name],
            (None, Some(names)) => names,
            (None, None) => Vec::new(),
        };
        if names.is_empty() {
            return Err(at("no system call names".into()));
        }
        let action = oci_action(&call.action, call.errno_ret).map_err(at)?;
        let mut conds = Vec::new();
        for arg in call.args.iter().flatten() {
            let index = u8::try_from(arg.index)
                .ok()
                .filter(|&i| i <= 5)
                .ok_or_else(|| {
                    at(format!(
                        "argument index {} (system calls have 0 to 5)",
                        arg.index
                    ))
                })?;
            let (op, value) = oci_op(&arg.op, arg.value, arg.value_two).map_err(at)?;
            conds.push(Cond {
                index,
                width: SeccompCmpArgLen::Qword,
                op,
                value,
            });
        }
        if !oci_applies(call.includes.as_ref(), call.excludes.as_ref(), arch, kernel).map_err(at)? {
            continue;
        }
        // As runc does: comparisons on distinct arguments must all hold; several on the same
        // argument are alternatives (each one enough).
        let indexes: BTreeSet<u8> = conds.iter().map(|c| c.index).collect();
        let any_of = if conds.is_empty() {
            Vec::new()
        } else if indexes.len() == conds.len() {
            vec![conds]
        } else {
            conds.into_iter().map(|c| vec![c]).collect()
        };
        let mut nrs = Vec::new();
        for name in names {
            match table.get(name.as_str()) {
                Some(&nr) => nrs.push(nr),
                None if other.contains_key(name.as_str()) || foreign.contains(name.as_str()) => {}
                None => {
                    unknown.insert(name);
                }
            }
        }
        if action == default {
            continue;
        }
        rules.push(Rule {
            nrs,
            action,
            any_of,
        });
    }
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        let list: Vec<String> = unknown.into_iter().collect();
        warnings.push(format!(
            "not system calls on {} or any architecture egressd knows, ignored: {}",
            arch.name(),
            list.join(", ")
        ));
    }
    Ok((
        Spec {
            default,
            rules,
            flags,
        },
        warnings,
    ))
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

    use super::*;

    // ---- A classic-BPF interpreter for what seccompiler and `lower` emit, so verdicts can
    // be checked without installing anything, and for other architectures.

    const I386: u32 = 0x4000_0003;

    fn seccomp_data(arch: u32, nr: i64, args: [u64; 6]) -> [u8; 64] {
        let mut d = [0u8; 64];
        d[0..4].copy_from_slice(&(nr as i32).to_le_bytes());
        d[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            d[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        d
    }

    fn run_bpf(code: &[sock_filter], data: &[u8; 64]) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = &code[pc];
            let k = i.k as usize;
            let cond = |taken: bool| 1 + usize::from(if taken { i.jt } else { i.jf });
            pc += match i.code {
                0x20 => {
                    a = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                    1
                }
                0x54 => {
                    a &= i.k;
                    1
                }
                0x05 => 1 + k,
                0x15 => cond(a == i.k),
                0x25 => cond(a > i.k),
                0x35 => cond(a >= i.k),
                0x45 => cond(a & i.k != 0),
                0x06 => return i.k,
                other => panic!("unexpected BPF opcode {other:#x}"),
            };
        }
    }

    /// What the kernel answers to a call.
    fn verdict(program: &Program, arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        run_bpf(&program.code, &seccomp_data(arch, nr, args))
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const fn errno(e: i32) -> u32 {
        libc::SECCOMP_RET_ERRNO | e as u32
    }

    /// Verdicts by name on `arch`.
    struct Check {
        program: Program,
        arch: Arch,
        table: HashMap<&'static str, i64>,
    }

    impl Check {
        fn new(program: Program, arch: Arch) -> Self {
            Self {
                program,
                arch,
                table: arch.table(),
            }
        }

        fn call(&self, name: &str, args: &[u64]) -> u32 {
            let nr = *self.table.get(name).unwrap_or_else(|| panic!("{name}?"));
            let mut all = [0u64; 6];
            all[..args.len()].copy_from_slice(args);
            verdict(&self.program, self.arch.audit(), nr, all)
        }

        fn expect(&self, name: &str, args: &[u64], want: u32) {
            let got = self.call(name, args);
            assert_eq!(
                got,
                want,
                "{name}{args:x?} on {}: got {got:#x}, want {want:#x}",
                self.arch.name()
            );
        }
    }

    const AF_VSOCK: u64 = 40;
    const AF_ALG: u64 = 38;
    const HIGH: u64 = 1 << 32;

    #[test]
    fn profile_argument() {
        assert_eq!("default".parse::<Profile>(), Ok(Profile::Default));
        assert_eq!("off".parse::<Profile>(), Ok(Profile::Off));
        assert_eq!(
            "./default".parse::<Profile>(),
            Ok(Profile::Oci(PathBuf::from("./default")))
        );
        assert_eq!(
            "/etc/docker/seccomp.json".parse::<Profile>(),
            Ok(Profile::Oci(PathBuf::from("/etc/docker/seccomp.json")))
        );
        assert!("".parse::<Profile>().is_err());
        assert_eq!(Profile::Default.to_string(), "default");
        assert!(compile(&Profile::Off).unwrap().is_none());
    }

    #[test]
    fn default_profile_verdicts() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let c = Check::new(compile_default(arch).unwrap(), arch);
            let eafnosupport = errno(libc::EAFNOSUPPORT);
            let eperm = errno(libc::EPERM);
            for call in ["socket", "socketpair"] {
                for family in [
                    libc::AF_UNIX,
                    libc::AF_INET,
                    libc::AF_INET6,
                    libc::AF_NETLINK,
                ] {
                    c.expect(call, &[family as u64, libc::SOCK_STREAM as u64], ALLOW);
                }
                for family in [
                    AF_VSOCK,
                    AF_ALG,
                    libc::AF_PACKET as u64,
                    0,
                    31,
                    41,
                    44,
                    1000,
                ] {
                    c.expect(call, &[family], eafnosupport);
                }
                // The kernel reads an int: upper bits neither hide nor fake a family.
                c.expect(call, &[HIGH | AF_VSOCK], eafnosupport);
                c.expect(call, &[HIGH | libc::AF_INET as u64], ALLOW);
            }
            for request in [libc::TIOCSTI, libc::TIOCLINUX, libc::TIOCSETD] {
                let request = u64::from(request as u32);
                c.expect("ioctl", &[0, request], eperm);
                c.expect("ioctl", &[0, HIGH | request], eperm);
            }
            for request in [libc::TIOCGWINSZ, libc::TIOCSCTTY, libc::FIONREAD] {
                c.expect("ioctl", &[0, u64::from(request as u32)], ALLOW);
            }
            for rule in DEFAULT_RULES {
                if matches!(rule.when, When::Always) {
                    for name in rule.names.iter().filter(|n| c.table.contains_key(*n)) {
                        c.expect(name, &[], errno(rule.errno));
                    }
                }
            }
            let persona = |p: u32| u64::from(p);
            c.expect("personality", &[persona(u32::MAX)], ALLOW);
            c.expect("personality", &[0], ALLOW);
            c.expect("personality", &[8], ALLOW); // PER_LINUX32
            c.expect("personality", &[0x4_0000], ALLOW); // ADDR_NO_RANDOMIZE
            c.expect("personality", &[0x2_0008], ALLOW); // UNAME26 | PER_LINUX32
            c.expect("personality", &[persona(READ_IMPLIES_EXEC)], eperm);
            c.expect("personality", &[persona(MMAP_PAGE_ZERO | 0x4_0000)], eperm);
            assert_eq!(eperm, errno(libc::EPERM));
            c.expect("io_uring_setup", &[], errno(libc::ENOSYS));
            // Nested sandboxes, debuggers: untouched.
            for name in [
                "unshare",
                "setns",
                "clone",
                "clone3",
                "mount",
                "umount2",
                "pivot_root",
                "move_mount",
                "mount_setattr",
                "fsopen",
                "ptrace",
                "process_vm_writev",
                "process_vm_readv",
                "adjtimex",
                "clock_adjtime",
                "name_to_handle_at",
                "chroot",
                "read",
                "execve",
            ] {
                c.expect(name, &[libc::CLONE_NEWUSER as u64], ALLOW);
            }
            let kill = libc::SECCOMP_RET_KILL_PROCESS;
            let foreign = if arch == Arch::X86_64 {
                I386
            } else {
                0x4000_0028 // AUDIT_ARCH_ARM
            };
            assert_eq!(verdict(&c.program, foreign, 20, [0; 6]), kill);
            assert_eq!(verdict(&c.program, foreign, 359, [2; 6]), kill);
        }
    }

    #[test]
    fn x32_calls_get_enosys() {
        let p = compile_default(Arch::X86_64).unwrap();
        let socket = 41;
        let x32 = |nr: i64| verdict(&p, AUDIT_ARCH_X86_64, nr, [AF_VSOCK, 1, 0, 0, 0, 0]);
        assert_eq!(
            x32(i64::from(X32_SYSCALL_BIT) + socket),
            errno(libc::ENOSYS)
        );
        assert_eq!(x32(i64::from(X32_SYSCALL_BIT) + 39), errno(libc::ENOSYS));
        // A tracer's "skip this call" (-1) is left alone.
        assert_eq!(x32(-1), ALLOW);
        assert_eq!(x32(socket), errno(libc::EAFNOSUPPORT));
    }

    #[test]
    fn default_rule_names_are_system_calls() {
        let (x86, arm) = (Arch::X86_64.table(), Arch::Aarch64.table());
        let mut only_x86 = Vec::new();
        for rule in DEFAULT_RULES {
            for name in rule.names {
                assert!(
                    x86.contains_key(name),
                    "{name} is not an x86_64 system call"
                );
                if !arm.contains_key(name) {
                    only_x86.push(*name);
                }
            }
        }
        only_x86.sort_unstable();
        assert_eq!(only_x86, ["ioperm", "iopl", "uselib"]);
    }

    #[test]
    fn tables_are_well_formed() {
        for (name, text) in [
            ("x86_64", X86_64_TABLE),
            ("aarch64", AARCH64_TABLE),
            ("generic", GENERIC_TABLE),
        ] {
            let mut next = 0;
            let mut seen = BTreeSet::new();
            for line in text.lines().filter(|l| !l.is_empty()) {
                let mut words = line.split_whitespace();
                let start: i64 = words.next().unwrap().parse().unwrap();
                assert!(
                    start >= next,
                    "{name}: line {line:?} overlaps the one before"
                );
                next = start;
                for word in words {
                    assert!(seen.insert(word), "{name}: {word} twice");
                    next += 1;
                }
            }
        }
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let table = arch.table();
            let numbers: BTreeSet<i64> = table.values().copied().collect();
            assert_eq!(numbers.len(), table.len(), "{arch:?}: a number twice");
            assert_eq!(table.get("listns"), Some(&470));
        }
        assert_eq!(Arch::X86_64.table().get("uprobe"), Some(&336));
        assert_eq!(Arch::Aarch64.table().get("wait4"), Some(&260));
        for name in FOREIGN_NAMES.split_whitespace() {
            assert!(
                !Arch::X86_64.table().contains_key(name),
                "{name} is x86_64's"
            );
            assert!(
                !Arch::Aarch64.table().contains_key(name),
                "{name} is aarch64's"
            );
        }
    }

    /// The table of the architecture the tests run on agrees with libc (the first and last
    /// name of every line, and every name of the default profile).
    #[test]
    fn native_table_matches_libc() {
        #[cfg(target_arch = "x86_64")]
        #[rustfmt::skip]
        let known: &[(&str, libc::c_long)] = &[
            ("rt_sigaction", libc::SYS_rt_sigaction), ("read", libc::SYS_read),
            ("select", libc::SYS_select), ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
            ("nanosleep", libc::SYS_nanosleep), ("sched_yield", libc::SYS_sched_yield),
            ("sendmsg", libc::SYS_sendmsg), ("getitimer", libc::SYS_getitimer),
            ("getsockopt", libc::SYS_getsockopt), ("recvmsg", libc::SYS_recvmsg),
            ("msgsnd", libc::SYS_msgsnd), ("clone", libc::SYS_clone), ("fchdir", libc::SYS_fchdir),
            ("msgrcv", libc::SYS_msgrcv), ("lchown", libc::SYS_lchown),
            ("rename", libc::SYS_rename), ("setuid", libc::SYS_setuid), ("umask", libc::SYS_umask),
            ("getgroups", libc::SYS_getgroups), ("setgid", libc::SYS_setgid),
            ("getsid", libc::SYS_getsid), ("setgroups", libc::SYS_setgroups),
            ("sigaltstack", libc::SYS_sigaltstack), ("capget", libc::SYS_capget),
            ("setpriority", libc::SYS_setpriority), ("utime", libc::SYS_utime),
            ("sched_getscheduler", libc::SYS_sched_getscheduler),
            ("sched_setparam", libc::SYS_sched_setparam), ("munlock", libc::SYS_munlock),
            ("sched_get_priority_max", libc::SYS_sched_get_priority_max),
            ("adjtimex", libc::SYS_adjtimex), ("mlockall", libc::SYS_mlockall),
            ("sethostname", libc::SYS_sethostname), ("setrlimit", libc::SYS_setrlimit),
            ("setdomainname", libc::SYS_setdomainname), ("gettid", libc::SYS_gettid),
            ("llistxattr", libc::SYS_llistxattr), ("readahead", libc::SYS_readahead),
            ("sched_setaffinity", libc::SYS_sched_setaffinity),
            ("flistxattr", libc::SYS_flistxattr), ("io_cancel", libc::SYS_io_cancel),
            ("sched_getaffinity", libc::SYS_sched_getaffinity),
            ("epoll_wait_old", libc::SYS_epoll_wait_old),
            ("get_thread_area", libc::SYS_get_thread_area), ("fadvise64", libc::SYS_fadvise64),
            ("remap_file_pages", libc::SYS_remap_file_pages),
            ("clock_settime", libc::SYS_clock_settime), ("timer_create", libc::SYS_timer_create),
            ("utimes", libc::SYS_utimes), ("clock_gettime", libc::SYS_clock_gettime),
            ("mq_timedreceive", libc::SYS_mq_timedreceive), ("vserver", libc::SYS_vserver),
            ("ioprio_set", libc::SYS_ioprio_set), ("mq_notify", libc::SYS_mq_notify),
            ("mkdirat", libc::SYS_mkdirat), ("ioprio_get", libc::SYS_ioprio_get),
            ("readlinkat", libc::SYS_readlinkat), ("mknodat", libc::SYS_mknodat),
            ("tee", libc::SYS_tee), ("fchmodat", libc::SYS_fchmodat),
            ("timerfd_create", libc::SYS_timerfd_create),
            ("sync_file_range", libc::SYS_sync_file_range), ("eventfd2", libc::SYS_eventfd2),
            ("eventfd", libc::SYS_eventfd), ("perf_event_open", libc::SYS_perf_event_open),
            ("epoll_create1", libc::SYS_epoll_create1),
            ("open_by_handle_at", libc::SYS_open_by_handle_at), ("recvmmsg", libc::SYS_recvmmsg),
            ("kcmp", libc::SYS_kcmp), ("clock_adjtime", libc::SYS_clock_adjtime),
            ("memfd_create", libc::SYS_memfd_create), ("finit_module", libc::SYS_finit_module),
            ("preadv2", libc::SYS_preadv2), ("kexec_file_load", libc::SYS_kexec_file_load),
            ("pwritev2", libc::SYS_pwritev2), ("move_mount", libc::SYS_move_mount),
            ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
            ("pidfd_getfd", libc::SYS_pidfd_getfd), ("fsopen", libc::SYS_fsopen),
            ("quotactl_fd", libc::SYS_quotactl_fd), ("faccessat2", libc::SYS_faccessat2),
            ("memfd_secret", libc::SYS_memfd_secret),
            ("landlock_create_ruleset", libc::SYS_landlock_create_ruleset),
            ("fchmodat2", libc::SYS_fchmodat2), ("process_mrelease", libc::SYS_process_mrelease),
            ("acct", libc::SYS_acct), ("add_key", libc::SYS_add_key), ("bpf", libc::SYS_bpf),
            ("delete_module", libc::SYS_delete_module), ("init_module", libc::SYS_init_module),
            ("ioctl", libc::SYS_ioctl), ("ioperm", libc::SYS_ioperm), ("iopl", libc::SYS_iopl),
            ("kexec_load", libc::SYS_kexec_load), ("keyctl", libc::SYS_keyctl),
            ("lookup_dcookie", libc::SYS_lookup_dcookie), ("nfsservctl", libc::SYS_nfsservctl),
            ("personality", libc::SYS_personality), ("quotactl", libc::SYS_quotactl),
            ("reboot", libc::SYS_reboot), ("request_key", libc::SYS_request_key),
            ("settimeofday", libc::SYS_settimeofday), ("socket", libc::SYS_socket),
            ("socketpair", libc::SYS_socketpair), ("swapoff", libc::SYS_swapoff),
            ("swapon", libc::SYS_swapon), ("syslog", libc::SYS_syslog),
            ("uselib", libc::SYS_uselib), ("userfaultfd", libc::SYS_userfaultfd),
            ("vhangup", libc::SYS_vhangup), ("mseal", libc::SYS_mseal),
        ];
        #[cfg(target_arch = "aarch64")]
        #[rustfmt::skip]
        let known: &[(&str, libc::c_long)] = &[
            ("getxattr", libc::SYS_getxattr), ("io_setup", libc::SYS_io_setup),
            ("fremovexattr", libc::SYS_fremovexattr), ("lgetxattr", libc::SYS_lgetxattr),
            ("fcntl", libc::SYS_fcntl), ("getcwd", libc::SYS_getcwd), ("flock", libc::SYS_flock),
            ("inotify_init1", libc::SYS_inotify_init1), ("nfsservctl", libc::SYS_nfsservctl),
            ("mknodat", libc::SYS_mknodat), ("fchmodat", libc::SYS_fchmodat),
            ("statfs", libc::SYS_statfs), ("readv", libc::SYS_readv),
            ("fchownat", libc::SYS_fchownat), ("splice", libc::SYS_splice),
            ("writev", libc::SYS_writev), ("timerfd_create", libc::SYS_timerfd_create),
            ("tee", libc::SYS_tee), ("exit_group", libc::SYS_exit_group),
            ("timerfd_settime", libc::SYS_timerfd_settime), ("getitimer", libc::SYS_getitimer),
            ("waitid", libc::SYS_waitid), ("timer_gettime", libc::SYS_timer_gettime),
            ("setitimer", libc::SYS_setitimer), ("clock_getres", libc::SYS_clock_getres),
            ("timer_getoverrun", libc::SYS_timer_getoverrun),
            ("sched_getscheduler", libc::SYS_sched_getscheduler),
            ("clock_nanosleep", libc::SYS_clock_nanosleep),
            ("sched_get_priority_max", libc::SYS_sched_get_priority_max),
            ("sched_getparam", libc::SYS_sched_getparam), ("tgkill", libc::SYS_tgkill),
            ("sched_get_priority_min", libc::SYS_sched_get_priority_min),
            ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait), ("sigaltstack", libc::SYS_sigaltstack),
            ("setreuid", libc::SYS_setreuid), ("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo),
            ("getpgid", libc::SYS_getpgid), ("setuid", libc::SYS_setuid),
            ("getsid", libc::SYS_getsid), ("getuid", libc::SYS_getuid),
            ("getrusage", libc::SYS_getrusage), ("mq_timedreceive", libc::SYS_mq_timedreceive),
            ("geteuid", libc::SYS_geteuid), ("semop", libc::SYS_semop),
            ("mq_notify", libc::SYS_mq_notify), ("getsockname", libc::SYS_getsockname),
            ("shmget", libc::SYS_shmget), ("brk", libc::SYS_brk),
            ("getpeername", libc::SYS_getpeername), ("swapoff", libc::SYS_swapoff),
            ("munmap", libc::SYS_munmap), ("mbind", libc::SYS_mbind),
            ("mprotect", libc::SYS_mprotect), ("perf_event_open", libc::SYS_perf_event_open),
            ("get_mempolicy", libc::SYS_get_mempolicy), ("recvmmsg", libc::SYS_recvmmsg),
            ("accept4", libc::SYS_accept4), ("open_by_handle_at", libc::SYS_open_by_handle_at),
            ("wait4", libc::SYS_wait4), ("finit_module", libc::SYS_finit_module),
            ("clock_adjtime", libc::SYS_clock_adjtime), ("execveat", libc::SYS_execveat),
            ("sched_setattr", libc::SYS_sched_setattr), ("pkey_alloc", libc::SYS_pkey_alloc),
            ("userfaultfd", libc::SYS_userfaultfd), ("kexec_file_load", libc::SYS_kexec_file_load),
            ("pkey_free", libc::SYS_pkey_free), ("move_mount", libc::SYS_move_mount),
            ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
            ("pidfd_getfd", libc::SYS_pidfd_getfd), ("fsopen", libc::SYS_fsopen),
            ("quotactl_fd", libc::SYS_quotactl_fd), ("faccessat2", libc::SYS_faccessat2),
            ("memfd_secret", libc::SYS_memfd_secret),
            ("landlock_create_ruleset", libc::SYS_landlock_create_ruleset),
            ("process_mrelease", libc::SYS_process_mrelease), ("acct", libc::SYS_acct),
            ("add_key", libc::SYS_add_key), ("bpf", libc::SYS_bpf),
            ("clock_settime", libc::SYS_clock_settime), ("delete_module", libc::SYS_delete_module),
            ("init_module", libc::SYS_init_module), ("ioctl", libc::SYS_ioctl),
            ("kexec_load", libc::SYS_kexec_load), ("keyctl", libc::SYS_keyctl),
            ("lookup_dcookie", libc::SYS_lookup_dcookie), ("personality", libc::SYS_personality),
            ("quotactl", libc::SYS_quotactl), ("reboot", libc::SYS_reboot),
            ("request_key", libc::SYS_request_key), ("settimeofday", libc::SYS_settimeofday),
            ("socket", libc::SYS_socket), ("socketpair", libc::SYS_socketpair),
            ("swapon", libc::SYS_swapon), ("syslog", libc::SYS_syslog),
            ("vhangup", libc::SYS_vhangup), ("mseal", libc::SYS_mseal),
        ];
        let table = Arch::native().unwrap().table();
        for (name, nr) in known {
            assert_eq!(table.get(name), Some(nr), "{name}");
        }
    }

    #[test]
    fn arguments_round_trip() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let program = compile_default(arch).unwrap();
            let arg = program.to_arg();
            assert_eq!(arg.len(), 2 + 16 * program.instructions());
            assert_eq!(Program::from_arg(&arg).unwrap(), program);
        }
        let max = format!("0:{}", "0006000000000000".repeat(MAX_FILTER_LEN));
        assert!(max.len() < 128 * 1024);
        assert!(Program::from_arg(&max).is_ok());
        for bad in [
            "",
            "0",
            "x:0000000000000000",
            "0:",
            "0:00000000000000",
            "0:000000000000000g",
            "0:+000000000000000",
            &format!("{max}0000000000000000"),
        ] {
            assert!(Program::from_arg(bad).is_err(), "{bad:?}");
        }
    }

    /// A profile in the format of `docker run --security-opt seccomp=FILE` (written for
    /// this test), using what such files usually contain.
    const DOCKER_STYLE: &str = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
            {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": null}
        ],
        "syscalls": [
            {"names": ["read", "write", "close", "exit", "exit_group", "getpid", "fstat64", "mmap2", "_llseek"],
             "action": "SCMP_ACT_ALLOW", "args": [], "comment": "", "includes": {}, "excludes": {}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["kexec_load"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_NE"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}]},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
            {"names": ["cacheflush", "set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}},
            {"names": ["mount", "unshare", "setns"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
             "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"name": "uname", "action": "SCMP_ACT_LOG"},
            {"names": ["fcntl"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 3, "op": "SCMP_CMP_EQ"}]},
            {"names": ["mprotect"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 4096, "op": "SCMP_CMP_GE"}, {"index": 2, "value": 4, "op": "SCMP_CMP_LE"}]},
            {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS", "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
            {"names": ["kill"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["getppid", "not_a_syscall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22},
            {"names": ["gettid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
        ]
    }"#;

    #[test]
    fn docker_style_profile() {
        let path = Path::new("docker-style.json");
        let p = compile_oci(DOCKER_STYLE.as_bytes(), path, Arch::X86_64, (6, 18)).unwrap();
        assert_eq!(p.warnings().len(), 1, "{:?}", p.warnings());
        assert!(p.warnings()[0].contains("not_a_syscall"));
        for quiet in ["_llseek", "fstat64", "mmap2", "cacheflush", "set_tls"] {
            assert!(!p.warnings()[0].contains(quiet), "{quiet} warned about");
        }
        let c = Check::new(p, Arch::X86_64);
        let eperm = errno(libc::EPERM);
        c.expect("read", &[], ALLOW);
        c.expect("openat", &[], eperm);
        c.expect("ptrace", &[], ALLOW);
        c.expect("kexec_load", &[], eperm);
        c.expect("socket", &[libc::AF_INET as u64], ALLOW);
        c.expect("socket", &[AF_VSOCK], eperm);
        c.expect("personality", &[0], ALLOW);
        c.expect("personality", &[0xffff_ffff], ALLOW);
        c.expect("personality", &[8], eperm);
        c.expect("arch_prctl", &[], ALLOW);
        // Capabilities are never held in the sandbox.
        c.expect("mount", &[], eperm);
        c.expect("unshare", &[libc::CLONE_NEWUSER as u64], eperm);
        c.expect("clone", &[libc::SIGCHLD as u64], ALLOW);
        c.expect(
            "clone",
            &[(libc::CLONE_NEWUSER | libc::SIGCHLD) as u64],
            eperm,
        );
        c.expect("clone3", &[], errno(libc::ENOSYS));
        c.expect("uname", &[], libc::SECCOMP_RET_LOG);
        // Two comparisons of one argument: either is enough (as runc reads them).
        c.expect("fcntl", &[3, 1], ALLOW);
        c.expect("fcntl", &[3, 3], ALLOW);
        c.expect("fcntl", &[3, 2], eperm);
        // Comparisons of different arguments: all must hold.
        c.expect("mprotect", &[8192, 4096, 4], ALLOW);
        c.expect("mprotect", &[0, 4096, 4], eperm);
        c.expect("mprotect", &[8192, 4096, 7], eperm);
        // Both kill entries match kill(_, 9): the strictest wins.
        c.expect("kill", &[1, 9], libc::SECCOMP_RET_KILL_PROCESS);
        c.expect("kill", &[1, 15], ALLOW);
        c.expect("getppid", &[], errno(libc::EINVAL));
        c.expect("gettid", &[], eperm);
        assert_eq!(
            verdict(&c.program, I386, 20, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        assert_eq!(
            verdict(&c.program, AUDIT_ARCH_X86_64, 0x4000_0000 + 39, [0; 6]),
            errno(libc::ENOSYS)
        );

        // The same file on aarch64: arch_prctl does not exist there, cacheflush is arm32's.
        let p = compile_oci(DOCKER_STYLE.as_bytes(), path, Arch::Aarch64, (5, 4)).unwrap();
        assert!(!p.warnings()[0].contains("arch_prctl"));
        let c = Check::new(p, Arch::Aarch64);
        c.expect("ptrace", &[], ALLOW);
        c.expect("read", &[], ALLOW);
        c.expect("openat", &[], eperm);
        // An older kernel drops the minKernel 4.8 entry only below 4.8.
        let old = compile_oci(DOCKER_STYLE.as_bytes(), path, Arch::Aarch64, (4, 4)).unwrap();
        Check::new(old, Arch::Aarch64).expect("ptrace", &[], eperm);
    }

    #[test]
    fn allow_by_default_profile() {
        let text = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["keyctl", "add_key"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 1, "value": 21522, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["getppid"], "action": "SCMP_ACT_TRAP"}
        ]}"#;
        let p = compile_oci(text.as_bytes(), Path::new("a.json"), Arch::X86_64, (6, 1)).unwrap();
        assert!(p.warnings().is_empty());
        let c = Check::new(p, Arch::X86_64);
        c.expect("keyctl", &[], errno(libc::EPERM));
        c.expect("ioctl", &[0, 0x5412], errno(libc::EACCES)); // TIOCSTI
        c.expect("ioctl", &[0, 0x5413], ALLOW); // TIOCGWINSZ
        c.expect("getpid", &[], ALLOW);
        c.expect("getppid", &[], libc::SECCOMP_RET_TRAP);
        c.expect("openat", &[], ALLOW);
    }

    fn oci_error(text: &str) -> Error {
        compile_oci(
            text.as_bytes(),
            Path::new("/etc/p.json"),
            Arch::X86_64,
            (6, 1),
        )
        .expect_err(text)
    }

    #[test]
    fn json_errors_name_the_file_line_and_column() {
        let e = oci_error(
            "{\n  \"defaultAction\": \"SCMP_ACT_ERRNO\",\n  \"syscalls\": [\n    {\"names\": [\"read\"] \"action\": \"SCMP_ACT_ALLOW\"}\n  ]\n}",
        );
        let Error::Json { line, column, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!((*line, *column), (4, 24));
        let text = e.to_string();
        assert!(text.starts_with("/etc/p.json:4:24: expected"), "{text}");
        assert!(!text.contains(" at line "), "{text}");

        let e = oci_error("{\"defaultaction\": \"SCMP_ACT_ALLOW\"}").to_string();
        assert!(e.contains("unknown field `defaultaction`"), "{e}");
        let e = oci_error("{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"syscalls\": [{\"names\": \"read\", \"action\": \"SCMP_ACT_ALLOW\"}]}")
            .to_string();
        assert!(e.starts_with("/etc/p.json:1:"), "{e}");
    }

    #[test]
    fn unsupported_constructs_name_the_entry() {
        let entry = |second: &str| {
            format!(
                r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {{"names": ["read"], "action": "SCMP_ACT_ALLOW"}}, {second}]}}"#
            )
        };
        for (second, words) in [
            (
                r#"{"names": ["ioctl"], "action": "SCMP_ACT_NOTIFY"}"#,
                "SCMP_ACT_NOTIFY",
            ),
            (
                r#"{"names": ["ioctl"], "action": "SCMP_ACT_MAYBE"}"#,
                "unknown action",
            ),
            (
                r#"{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_ABOUT"}]}"#,
                "unknown comparison",
            ),
            (
                r#"{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}"#,
                "argument index 6",
            ),
            (
                r#"{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}"#,
                "errnoRet",
            ),
            (
                r#"{"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5000}"#,
                "not an errno",
            ),
            (
                r#"{"names": [], "action": "SCMP_ACT_ALLOW"}"#,
                "no system call names",
            ),
            (
                r#"{"name": "read", "names": ["write"], "action": "SCMP_ACT_ALLOW"}"#,
                "either name or names",
            ),
            (
                r#"{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5"}}"#,
                "minKernel",
            ),
        ] {
            let e = oci_error(&entry(second));
            assert!(
                matches!(e, Error::Profile { entry: Some(1), .. }),
                "{second}: {e:?}"
            );
            let text = e.to_string();
            assert!(text.starts_with("/etc/p.json: syscalls[1]: "), "{text}");
            assert!(text.contains(words), "{text}");
        }
        for (profile, words) in [
            (r#"{"syscalls": []}"#, "defaultAction is missing"),
            (r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#, "SCMP_ACT_NOTIFY"),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}"#,
                "listenerPath",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NEW_LISTENER"]}"#,
                "not supported",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_46"]}"#,
                "unknown architecture",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                    "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#,
                "not both",
            ),
        ] {
            let e = oci_error(profile);
            assert!(matches!(e, Error::Profile { entry: None, .. }), "{e:?}");
            assert!(e.to_string().contains(words), "{e}");
        }
    }

    #[test]
    fn too_large_a_profile_is_refused() {
        let alternatives: Vec<String> = (0..1200)
            .map(|i| format!(r#"{{"index": 1, "value": {i}, "op": "SCMP_CMP_EQ"}}"#))
            .collect();
        let text = format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {{"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "args": [{}]}}]}}"#,
            alternatives.join(",")
        );
        let e = oci_error(&text).to_string();
        assert!(e.contains("the kernel takes at most 4096"), "{e}");
    }

    #[test]
    fn unreadable_file() {
        let e = compile(&Profile::Oci("/nonexistent/egressd-seccomp.json".into())).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/egressd-seccomp.json"),
            "{e}"
        );
    }

    /// The README table of the default profile (`cargo test readme_table -- --nocapture`).
    #[test]
    fn readme_table() {
        let mut out =
            String::from("| System calls | Refused when | Error | Why |\n|---|---|---|---|\n");
        for rule in DEFAULT_RULES {
            let names: Vec<String> = rule.names.iter().map(|n| format!("`{n}`")).collect();
            let when = match rule.when {
                When::Always => "always".to_string(),
                When::FamilyNotIn(_) => {
                    "the family is not `AF_UNIX`, `AF_INET`, `AF_INET6` or `AF_NETLINK`".to_string()
                }
                When::RequestIn(r) if r.len() == 1 => "the request is `TIOCSETD`".to_string(),
                When::RequestIn(_) => "the request is `TIOCSTI` or `TIOCLINUX`".to_string(),
                When::PersonaHasAny(_) => {
                    "the persona sets `READ_IMPLIES_EXEC` or `MMAP_PAGE_ZERO`".to_string()
                }
            };
            let error = match rule.errno {
                libc::EPERM => "EPERM",
                libc::ENOSYS => "ENOSYS",
                libc::EAFNOSUPPORT => "EAFNOSUPPORT",
                other => panic!("name errno {other} in the README table"),
            };
            out.push_str(&format!(
                "| {} | {when} | {error} | {} |\n",
                names.join(", "),
                rule.why
            ));
        }
        println!("{out}");
        assert_eq!(out.lines().count(), DEFAULT_RULES.len() + 2);
    }

    // ---- In the kernel: forked children install the filter and try the calls.

    const SLOTS: usize = 40;
    const UNSET: i64 = i64::MIN;

    /// Runs `body` in a forked child and returns what it recorded and its wait status.
    /// The test harness is multi-threaded, so the child only makes system calls on data
    /// prepared before `fork` (no allocation, no lock, no panic).
    fn in_child(body: impl FnOnce(&mut [i64; SLOTS])) -> ([i64; SLOTS], libc::c_int) {
        let mut fds = [0; 2];
        // SAFETY: plain system calls; the child leaves through _exit.
        unsafe {
            assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
            let pid = libc::fork();
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                libc::close(fds[0]);
                // No core file from the children this test kills.
                libc::prctl(libc::PR_SET_DUMPABLE, 0);
                let mut out = [UNSET; SLOTS];
                // A bug in `body` must not let this copy of the test harness run on.
                let body = std::panic::AssertUnwindSafe(|| body(&mut out));
                if std::panic::catch_unwind(body).is_err() {
                    libc::_exit(101);
                }
                libc::write(fds[1], out.as_ptr().cast(), size_of_val(&out));
                libc::_exit(0);
            }
            libc::close(fds[1]);
            let mut out = [UNSET; SLOTS];
            let mut got = 0;
            let bytes = size_of_val(&out);
            while got < bytes {
                let n = libc::read(
                    fds[0],
                    out.as_mut_ptr().cast::<u8>().add(got).cast(),
                    bytes - got,
                );
                if n <= 0 {
                    break;
                }
                got += n as usize;
            }
            libc::close(fds[0]);
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            (out, status)
        }
    }

    /// 0 for success, -errno for failure.
    fn rc(ret: libc::c_long) -> i64 {
        if ret < 0 {
            -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            0
        }
    }

    fn ok_or_errno(v: i64) -> String {
        match v {
            0 => "ok".into(),
            UNSET => "not run".into(),
            v => std::io::Error::from_raw_os_error(-v as i32).to_string(),
        }
    }

    /// A fresh pseudo-terminal; returns its terminal side.
    fn pty() -> (OwnedFd, OwnedFd) {
        // SAFETY: plain system calls; the descriptors are owned right away.
        unsafe {
            let m = libc::open(
                c"/dev/ptmx".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            assert!(m >= 0, "/dev/ptmx: {}", std::io::Error::last_os_error());
            let master = OwnedFd::from_raw_fd(m);
            let unlock: libc::c_int = 0;
            assert_eq!(libc::ioctl(m, libc::TIOCSPTLCK, &unlock), 0);
            let s = libc::ioctl(
                m,
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            assert!(s >= 0, "TIOCGPTPEER: {}", std::io::Error::last_os_error());
            (master, OwnedFd::from_raw_fd(s))
        }
    }

    // Slots of the battery.
    const NAMES: [&str; 30] = [
        "setsid",
        "TIOCSCTTY",
        "socket(AF_VSOCK)",
        "socket(AF_INET)",
        "socket(AF_INET6)",
        "socket(AF_UNIX)",
        "socket(AF_NETLINK)",
        "socket(AF_PACKET)",
        "socket(1<<32|AF_PACKET)",
        "socketpair(AF_UNIX)",
        "socketpair(AF_PACKET)",
        "ioctl(TIOCSTI)",
        "ioctl(1<<32|TIOCSTI)",
        "ioctl(TIOCLINUX)",
        "ioctl(TIOCGWINSZ)",
        "keyctl(GET_KEYRING_ID)",
        "bpf(MAP_CREATE)",
        "userfaultfd",
        "perf_event_open",
        "syslog(SIZE_BUFFER)",
        "personality(query)",
        "personality(READ_IMPLIES_EXEC)",
        "personality(ADDR_NO_RANDOMIZE)",
        "unshare(NEWUSER|NEWNET)",
        "unshare(NEWNS)",
        "mount(tmpfs)",
        "ptrace(TRACEME)",
        "drop to nobody",
        "apply",
        "socket(AF_ALG)",
    ];
    const fn slot(name: &str) -> usize {
        let mut i = 0;
        while i < NAMES.len() {
            if NAMES[i].len() == name.len() && const_eq(NAMES[i].as_bytes(), name.as_bytes()) {
                return i;
            }
            i += 1;
        }
        panic!("no such slot")
    }
    const fn const_eq(a: &[u8], b: &[u8]) -> bool {
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Tries every call of the battery in a child: as this user or as nobody, with or
    /// without `program`.
    fn battery(
        program: Option<&Program>,
        as_nobody: bool,
        mount_dir: &std::ffi::CStr,
    ) -> [i64; SLOTS] {
        let (_master, slave) = pty();
        let tty = slave.as_raw_fd();
        let (out, status) = in_child(|r| {
            // SAFETY (whole closure): raw system calls on valid stack data.
            unsafe {
                if as_nobody {
                    let ok = libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())
                        == 0
                        && libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534) == 0
                        && libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) == 0;
                    r[slot("drop to nobody")] = if ok { 0 } else { -1 };
                    if !ok {
                        return;
                    }
                }
                if let Some(program) = program {
                    r[slot("apply")] = match apply(program) {
                        Ok(()) => 0,
                        Err(e) => -i64::from(e.raw_os_error().unwrap_or(1)),
                    };
                    if r[slot("apply")] != 0 {
                        return;
                    }
                }
                let sock = |f: libc::c_long, t: libc::c_int, p: libc::c_int| {
                    rc(libc::syscall(
                        libc::SYS_socket,
                        f,
                        t | libc::SOCK_CLOEXEC,
                        p,
                    ))
                };
                r[slot("setsid")] = rc(libc::setsid().into());
                r[slot("TIOCSCTTY")] = rc(libc::ioctl(tty, libc::TIOCSCTTY, 0).into());
                r[slot("socket(AF_VSOCK)")] = sock(AF_VSOCK as _, libc::SOCK_STREAM, 0);
                r[slot("socket(AF_INET)")] = sock(libc::AF_INET.into(), libc::SOCK_DGRAM, 0);
                r[slot("socket(AF_INET6)")] = sock(libc::AF_INET6.into(), libc::SOCK_DGRAM, 0);
                r[slot("socket(AF_UNIX)")] = sock(libc::AF_UNIX.into(), libc::SOCK_STREAM, 0);
                r[slot("socket(AF_NETLINK)")] = sock(libc::AF_NETLINK.into(), libc::SOCK_RAW, 0);
                r[slot("socket(AF_PACKET)")] = sock(libc::AF_PACKET.into(), libc::SOCK_DGRAM, 0);
                r[slot("socket(1<<32|AF_PACKET)")] =
                    sock((HIGH | libc::AF_PACKET as u64) as _, libc::SOCK_DGRAM, 0);
                r[slot("socket(AF_ALG)")] = sock(AF_ALG as _, libc::SOCK_SEQPACKET, 0);
                let mut pair = [0; 2];
                r[slot("socketpair(AF_UNIX)")] =
                    rc(
                        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr())
                            .into(),
                    );
                r[slot("socketpair(AF_PACKET)")] =
                    rc(
                        libc::socketpair(libc::AF_PACKET, libc::SOCK_DGRAM, 0, pair.as_mut_ptr())
                            .into(),
                    );
                let byte = b'#';
                r[slot("ioctl(TIOCSTI)")] = rc(libc::ioctl(tty, libc::TIOCSTI, &byte).into());
                r[slot("ioctl(1<<32|TIOCSTI)")] = rc(libc::syscall(
                    libc::SYS_ioctl,
                    tty,
                    HIGH | u64::from(libc::TIOCSTI as u32),
                    &byte,
                ));
                let subcode: u8 = 6; // TIOCL_GETSHIFTSTATE
                r[slot("ioctl(TIOCLINUX)")] =
                    rc(libc::ioctl(tty, libc::TIOCLINUX, &subcode).into());
                let mut ws: libc::winsize = std::mem::zeroed();
                r[slot("ioctl(TIOCGWINSZ)")] =
                    rc(libc::ioctl(tty, libc::TIOCGWINSZ, &mut ws).into());
                // KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING, without creating it.
                r[slot("keyctl(GET_KEYRING_ID)")] = rc(libc::syscall(libc::SYS_keyctl, 0, -3, 0));
                // BPF_MAP_CREATE: an array of one 4-byte value.
                let attr: [u32; 16] = [2, 4, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                r[slot("bpf(MAP_CREATE)")] =
                    rc(libc::syscall(libc::SYS_bpf, 0, &attr, size_of_val(&attr)));
                // O_CLOEXEC | UFFD_USER_MODE_ONLY
                r[slot("userfaultfd")] =
                    rc(libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | 1));
                // A software clock counter of this process (PERF_ATTR_SIZE_VER0 is 64).
                let mut perf = [0u32; 32];
                perf[0] = 1; // PERF_TYPE_SOFTWARE
                perf[1] = 64;
                perf[2] = 0; // PERF_COUNT_SW_CPU_CLOCK
                r[slot("perf_event_open")] = rc(libc::syscall(
                    libc::SYS_perf_event_open,
                    &perf,
                    0,
                    -1,
                    -1,
                    0,
                ));
                r[slot("syslog(SIZE_BUFFER)")] = rc(libc::syscall(
                    libc::SYS_syslog,
                    10,
                    std::ptr::null::<u8>(),
                    0,
                ));
                let persona =
                    |p: u32| rc(libc::syscall(libc::SYS_personality, libc::c_ulong::from(p)));
                r[slot("personality(query)")] = persona(u32::MAX);
                r[slot("personality(READ_IMPLIES_EXEC)")] = persona(READ_IMPLIES_EXEC);
                r[slot("personality(ADDR_NO_RANDOMIZE)")] = persona(0x4_0000);
                r[slot("unshare(NEWUSER|NEWNET)")] =
                    rc(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET).into());
                r[slot("unshare(NEWNS)")] = rc(libc::unshare(libc::CLONE_NEWNS).into());
                r[slot("mount(tmpfs)")] = rc(libc::mount(
                    c"none".as_ptr(),
                    mount_dir.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
                .into());
                r[slot("ptrace(TRACEME)")] = rc(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0));
            }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x}"
        );
        out
    }

    fn report(label: &str, r: &[i64; SLOTS]) -> String {
        let mut s = format!("{label}:\n");
        for (i, name) in NAMES.iter().enumerate() {
            s.push_str(&format!("  {name:32} {}\n", ok_or_errno(r[i])));
        }
        s
    }

    #[test]
    fn default_profile_in_the_kernel() {
        let program = compile(&Profile::Default).unwrap().unwrap();
        let dir = std::env::temp_dir().join(format!("egressd-seccomp-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Removed however the test ends (the tmpfs lived in the children's namespaces only).
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let _remove = Remove(dir.clone());
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let dir_c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let mut identities = vec![false];
        if root {
            // Nested sandboxes as an unprivileged user: what the sandbox's command is.
            identities.push(true);
        }
        for as_nobody in identities {
            let who = if as_nobody { "nobody" } else { "this user" };
            let bare = battery(None, as_nobody, &dir_c);
            let filtered = battery(Some(&program), as_nobody, &dir_c);
            let both = format!(
                "{}{}",
                report(&format!("{who}, no filter"), &bare),
                report(&format!("{who}, default profile"), &filtered)
            );
            let get = |r: &[i64; SLOTS], name: &str| r[slot(name)];
            let privileged = root && !as_nobody;
            assert_eq!(get(&filtered, "apply"), 0, "{both}");
            assert_eq!(get(&filtered, "TIOCSCTTY"), 0, "{both}");

            let eafnosupport = -i64::from(libc::EAFNOSUPPORT);
            let eperm = -i64::from(libc::EPERM);
            for name in [
                "socket(AF_VSOCK)",
                "socket(AF_PACKET)",
                "socket(1<<32|AF_PACKET)",
                "socket(AF_ALG)",
                "socketpair(AF_PACKET)",
            ] {
                assert_eq!(get(&filtered, name), eafnosupport, "{name}\n{both}");
            }
            for name in [
                "socket(AF_INET)",
                "socket(AF_INET6)",
                "socket(AF_UNIX)",
                "socket(AF_NETLINK)",
                "socketpair(AF_UNIX)",
                "ioctl(TIOCGWINSZ)",
                "personality(query)",
                "personality(ADDR_NO_RANDOMIZE)",
                "ptrace(TRACEME)",
            ] {
                assert_eq!(get(&filtered, name), 0, "{name}\n{both}");
                assert_eq!(get(&bare, name), 0, "{name}\n{both}");
            }
            for name in [
                "ioctl(TIOCSTI)",
                "ioctl(1<<32|TIOCSTI)",
                "ioctl(TIOCLINUX)",
                "keyctl(GET_KEYRING_ID)",
                "bpf(MAP_CREATE)",
                "userfaultfd",
                "perf_event_open",
                "syslog(SIZE_BUFFER)",
                "personality(READ_IMPLIES_EXEC)",
            ] {
                assert_eq!(get(&filtered, name), eperm, "{name}\n{both}");
            }
            // Without the filter the same calls get through, or fail for another reason.
            for (name, refused) in [
                ("socket(AF_PACKET)", eafnosupport),
                ("socketpair(AF_PACKET)", eafnosupport),
                ("ioctl(TIOCSTI)", eperm),
                ("ioctl(TIOCLINUX)", eperm),
                ("keyctl(GET_KEYRING_ID)", eperm),
            ] {
                let v = get(&bare, name);
                assert!(v != refused && v != UNSET, "{name}\n{both}");
            }
            assert_eq!(get(&bare, "personality(READ_IMPLIES_EXEC)"), 0, "{both}");
            // The kernel ignores the upper half of these `int` arguments; so does the filter.
            assert_eq!(
                get(&bare, "socket(1<<32|AF_PACKET)"),
                get(&bare, "socket(AF_PACKET)"),
                "{both}"
            );
            assert_eq!(
                get(&bare, "ioctl(1<<32|TIOCSTI)"),
                get(&bare, "ioctl(TIOCSTI)"),
                "{both}"
            );
            // Root's capabilities open the rest (an unprivileged user gets EPERM from the
            // kernel already, which proves nothing about the filter).
            if privileged {
                for name in [
                    "bpf(MAP_CREATE)",
                    "userfaultfd",
                    "perf_event_open",
                    "syslog(SIZE_BUFFER)",
                ] {
                    let v = get(&bare, name);
                    assert!(v != eperm && v != UNSET, "{name}\n{both}");
                }
            }
            // Nested sandboxes keep working: user, network and mount namespaces, mounts.
            for name in ["unshare(NEWUSER|NEWNET)", "unshare(NEWNS)", "mount(tmpfs)"] {
                assert_eq!(get(&filtered, name), get(&bare, name), "{name}\n{both}");
            }
            if privileged {
                assert_eq!(get(&filtered, "mount(tmpfs)"), 0, "{both}");
            }
            eprintln!("{both}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn i386_system_calls_kill_the_process() {
        let program = compile(&Profile::Default).unwrap().unwrap();
        let int80_getpid = |filtered: bool| {
            in_child(|r| {
                if filtered && apply(&program).is_err() {
                    return;
                }
                let ret: i32;
                // SAFETY: i386 getpid (20) through the 32-bit entry; no memory is touched.
                unsafe {
                    std::arch::asm!(
                        "int 0x80",
                        inlateout("eax") 20i32 => ret,
                        lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
                        options(nostack)
                    );
                }
                r[0] = i64::from(ret);
            })
        };
        let (bare, status) = int80_getpid(false);
        assert!(libc::WIFEXITED(status), "{status:#x}");
        if bare[0] <= 0 {
            eprintln!(
                "no i386 emulation in this kernel ({}): nothing to check",
                bare[0]
            );
            return;
        }
        let (_, status) = int80_getpid(true);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "status {status:#x}"
        );
    }

    /// A default-deny profile with several actions installs and behaves in the kernel as
    /// the interpreter above says (it needs not allow `seccomp` itself).
    #[test]
    fn oci_profile_in_the_kernel() {
        let text = r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "syscalls": [
            {"names": ["write", "exit", "exit_group", "getpid", "rt_sigreturn"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]},
            {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["getppid"], "action": "SCMP_ACT_LOG"}
        ]}"#;
        let program = compile_oci(
            text.as_bytes(),
            Path::new("t.json"),
            Arch::native().unwrap(),
            (6, 1),
        )
        .unwrap();
        let (r, status) = in_child(|r| {
            if apply(&program).is_err() {
                return;
            }
            // SAFETY: raw system calls.
            unsafe {
                let mut uts: libc::utsname = std::mem::zeroed();
                r[0] = rc(libc::syscall(libc::SYS_getpid));
                r[1] = rc(libc::syscall(libc::SYS_gettid));
                r[2] = rc(libc::syscall(libc::SYS_uname, &mut uts));
                r[3] = rc(libc::syscall(
                    libc::SYS_socket,
                    libc::AF_UNIX,
                    libc::SOCK_STREAM,
                    0,
                ));
                r[4] = rc(libc::syscall(
                    libc::SYS_socket,
                    AF_VSOCK,
                    libc::SOCK_STREAM,
                    0,
                ));
                r[5] = rc(libc::syscall(libc::SYS_getppid));
            }
        });
        assert!(libc::WIFEXITED(status), "{status:#x}");
        let want = [
            0,
            -libc::EPERM,
            -libc::ENOSYS,
            0,
            -libc::EPERM,
            -libc::EACCES,
        ]
        .map(i64::from);
        assert_eq!(
            r[..6],
            want,
            "getpid, gettid, uname, socket(unix), socket(vsock), getppid"
        );
    }
}
