//! The actions of the seccomp tests: doors out of the sandbox (other socket families, the
//! hypervisor's vsock), into the user's terminal, and into the kernel, which egressd's
//! default seccomp profile closes.
//!
//! ```text
//! vsock CID:PORT   socket(AF_VSOCK) then connect() (the kernel gives up after 2 s);
//!                  `stage` is socket or connect
//! socket FAMILY    socket() of FAMILY, then close: a name (unix, inet, inet6, netlink,
//!                  packet, key, bluetooth, can, tipc, rds, kcm, xdp, alg, vsock, appletalk,
//!                  ax25, x25, llc, rxrpc, phonet, ieee802154, caif, nfc, qipcrtr, smc, mctp)
//!                  or a number; `family`, `type` and `protocol` say what was asked
//! tiocsti TEXT     push TEXT into the terminal on stdin with TIOCSTI, one byte at a time;
//!                  `pushed` counts the bytes that went in; stage `isatty` when stdin is
//!                  not a terminal
//! keyctl           keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING), creating
//!                  nothing; target `@s`, `id` on success
//! bpf              bpf(BPF_MAP_CREATE) of an array of one 4-byte value, closed at once;
//!                  target `array`
//! ```
//!
//! Errors carry `stage`, `errno` and `code` as the network actions' do.

use std::io;

use crate::json::Json;

/// `errno_name` of the probe, plus the codes these actions meet.
fn errno_name(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOTTY) => "ENOTTY",
        Some(libc::ENOSYS) => "ENOSYS",
        Some(libc::ENODEV) => "ENODEV",
        Some(libc::EIO) => "EIO",
        Some(libc::EBADF) => "EBADF",
        Some(libc::ENOKEY) => "ENOKEY",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(libc::ESRCH) => "ESRCH",
        Some(libc::ENOMEM) => "ENOMEM",
        _ => crate::json::errno_name(e),
    }
}

fn error(mut out: Json, stage: &str, e: &io::Error) -> Json {
    out.field("result", "error");
    out.field("stage", stage);
    out.field("errno", errno_name(e));
    out.raw("code", &e.raw_os_error().unwrap_or(0).to_string());
    out.field("message", &e.to_string());
    out
}

fn ok(mut out: Json) -> Json {
    out.field("result", "ok");
    out
}

/// -1 and errno to an `io::Error`.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn close(fd: libc::c_long) {
    // SAFETY: closes a descriptor this module just opened and owns.
    unsafe { libc::close(fd as libc::c_int) };
}

/// `vsock CID:PORT`: see the module doc.
pub fn vsock(target: &str) -> Json {
    let out = Json::new("vsock", target);
    let parsed = target
        .split_once(':')
        .and_then(|(cid, port)| Some((cid.parse::<u32>().ok()?, port.parse::<u32>().ok()?)));
    let Some((cid, port)) = parsed else {
        let e = io::Error::from_raw_os_error(libc::EINVAL);
        return error(out, "parse", &e);
    };
    // SAFETY: plain system call.
    let fd = match check(unsafe {
        libc::syscall(
            libc::SYS_socket,
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        )
    }) {
        Ok(fd) => fd,
        Err(e) => return error(out, "socket", &e),
    };
    // SAFETY: an all-zero sockaddr_vm is valid; the fields are then set.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm of the given length.
    let connected = check(unsafe {
        libc::connect(
            fd as libc::c_int,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
        .into()
    });
    close(fd);
    match connected {
        Ok(_) => ok(out),
        Err(e) => error(out, "connect", &e),
    }
}

/// Each family by name, with a type and protocol that make a valid socket of it.
const FAMILIES: &[(&str, i32, i32, i32)] = &[
    ("unix", libc::AF_UNIX, libc::SOCK_STREAM, 0),
    ("inet", libc::AF_INET, libc::SOCK_DGRAM, 0),
    ("inet6", libc::AF_INET6, libc::SOCK_DGRAM, 0),
    (
        "netlink",
        libc::AF_NETLINK,
        libc::SOCK_RAW,
        libc::NETLINK_ROUTE,
    ),
    ("packet", libc::AF_PACKET, libc::SOCK_DGRAM, 0),
    ("key", libc::AF_KEY, libc::SOCK_RAW, 2), // PF_KEY_V2
    ("bluetooth", libc::AF_BLUETOOTH, libc::SOCK_SEQPACKET, 0), // BTPROTO_L2CAP
    ("can", libc::AF_CAN, libc::SOCK_RAW, 1), // CAN_RAW
    ("tipc", libc::AF_TIPC, libc::SOCK_RDM, 0),
    ("rds", libc::AF_RDS, libc::SOCK_SEQPACKET, 0),
    ("kcm", 41, libc::SOCK_DGRAM, 0), // AF_KCM, KCMPROTO_CONNECTED
    ("xdp", 44, libc::SOCK_RAW, 0),   // AF_XDP
    ("alg", libc::AF_ALG, libc::SOCK_SEQPACKET, 0),
    ("vsock", libc::AF_VSOCK, libc::SOCK_STREAM, 0),
    ("appletalk", 5, libc::SOCK_DGRAM, 0),
    ("ax25", 3, libc::SOCK_SEQPACKET, 0),
    ("x25", 9, libc::SOCK_SEQPACKET, 0),
    ("llc", 26, libc::SOCK_DGRAM, 0),
    ("rxrpc", 33, libc::SOCK_DGRAM, libc::AF_INET),
    ("phonet", 35, libc::SOCK_DGRAM, 0),
    ("ieee802154", 36, libc::SOCK_DGRAM, 0),
    ("caif", 37, libc::SOCK_SEQPACKET, 0),
    ("nfc", 39, libc::SOCK_SEQPACKET, 0),
    ("qipcrtr", 42, libc::SOCK_DGRAM, 0),
    ("smc", 43, libc::SOCK_STREAM, 0),
    ("mctp", 45, libc::SOCK_DGRAM, 0),
];

/// FAMILY by name or number (a number of no family above gets SOCK_DGRAM, protocol 0).
fn family(target: &str) -> Option<(i32, i32, i32)> {
    let number = target.parse::<i32>().ok();
    let row = FAMILIES
        .iter()
        .find(|(name, family, ..)| *name == target || Some(*family) == number);
    match (row, number) {
        (Some(&(_, family, ty, protocol)), _) => Some((family, ty, protocol)),
        (None, Some(family)) => Some((family, libc::SOCK_DGRAM, 0)),
        (None, None) => None,
    }
}

/// `socket FAMILY`: see the module doc.
pub fn socket(target: &str) -> Json {
    let mut out = Json::new("socket", target);
    let Some((family, ty, protocol)) = family(target) else {
        return error(out, "parse", &io::Error::from_raw_os_error(libc::EINVAL));
    };
    out.raw("family", &family.to_string());
    out.raw("type", &ty.to_string());
    out.raw("protocol", &protocol.to_string());
    // SAFETY: plain system call.
    match check(unsafe {
        libc::syscall(libc::SYS_socket, family, ty | libc::SOCK_CLOEXEC, protocol)
    }) {
        Ok(fd) => {
            close(fd);
            ok(out)
        }
        Err(e) => error(out, "socket", &e),
    }
}

/// `tiocsti TEXT`: see the module doc.
pub fn tiocsti(text: &str) -> Json {
    let mut out = Json::new("tiocsti", text);
    // SAFETY: isatty only looks at the descriptor.
    if unsafe { libc::isatty(0) } != 1 {
        return error(out, "isatty", &io::Error::last_os_error());
    }
    let mut pushed = 0usize;
    let mut failure = None;
    for byte in text.bytes() {
        // SAFETY: TIOCSTI reads one byte from the pointer.
        let ret = unsafe { libc::ioctl(0, libc::TIOCSTI, &raw const byte) };
        if ret < 0 {
            failure = Some(io::Error::last_os_error());
            break;
        }
        pushed += 1;
    }
    out.raw("pushed", &pushed.to_string());
    match failure {
        None => ok(out),
        Some(e) => error(out, "ioctl", &e),
    }
}

/// `keyctl` (no target): see the module doc.
pub fn keyctl() -> Json {
    let mut out = Json::new("keyctl", "@s");
    const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
    const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
    // SAFETY: plain system call with integer arguments.
    match check(unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_GET_KEYRING_ID,
            KEY_SPEC_SESSION_KEYRING,
            0,
        )
    }) {
        Ok(id) => {
            out.raw("id", &id.to_string());
            ok(out)
        }
        Err(e) => error(out, "keyctl", &e),
    }
}

/// `bpf` (no target): see the module doc.
pub fn bpf() -> Json {
    let out = Json::new("bpf", "array");
    const BPF_MAP_CREATE: libc::c_long = 0;
    // union bpf_attr for BPF_MAP_CREATE: map_type (BPF_MAP_TYPE_ARRAY), key_size,
    // value_size, max_entries; the rest zero.
    let mut attr = [0u32; 16];
    attr[..4].copy_from_slice(&[2, 4, 4, 1]);
    // SAFETY: `attr` is readable for its whole size, which is passed along.
    match check(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            size_of_val(&attr),
        )
    }) {
        Ok(fd) => {
            close(fd);
            ok(out)
        }
        Err(e) => error(out, "bpf", &e),
    }
}
