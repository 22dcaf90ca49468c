//! The Unix-socket hooks: object, kernel layout, key encoding, event decoding, and (as root)
//! the hooks themselves against real sockets.

use std::{
    ffi::CString,
    os::unix::{
        ffi::OsStrExt as _,
        net::{SocketAddr as UnixAddr, UnixDatagram, UnixListener, UnixStream},
        process::CommandExt as _,
    },
    path::Path,
    process::Command,
    time::Duration,
};

use egressd_ebpf_common::{FLAG_UNIX_ABSTRACT_ALLOW, FLAG_UNIX_RULES};
use std::os::linux::net::SocketAddrExt as _;

use super::*;

#[test]
fn the_embedded_hooks_are_self_contained() {
    // Every reference in the two sections must be to a map: egressd links nothing else.
    let elf = unix_hooks::hide_sections(EBPF_OBJECT, &UNIX_PROGRAMS.map(|p| p.section))
        .expect("the object has the Unix-socket sections");
    assert_eq!(elf.bytes().len(), EBPF_OBJECT.len());
    for program in UNIX_PROGRAMS {
        let maps = unix_hooks::program_maps(EBPF_OBJECT, &program).expect(program.name);
        for map in ["SANDBOXES", "UNIX_ALLOW", "UNIX_EVENTS", "COUNTERS"] {
            assert!(maps.iter().any(|m| m == map), "{}: {maps:?}", program.name);
        }
    }
    // aya's parser accepts the copy in which they are hidden.
    let obj = aya::Ebpf::load(elf.bytes());
    // Loading needs root; the parse error (if any) would come first and not be EPERM.
    if let Err(e) = obj {
        let text = format!("{e:?}");
        assert!(!text.contains("InvalidProgramSection"), "{text}");
    }
}

#[test]
fn hiding_clears_only_the_executable_flag() {
    use object::{Object as _, ObjectSection as _, SectionFlags, elf::SHF_EXECINSTR};
    let exec = u64::from(SHF_EXECINSTR);
    let sections = UNIX_PROGRAMS.map(|p| p.section);
    let copy = unix_hooks::hide_sections(EBPF_OBJECT, &sections).unwrap();
    let flags = |data| -> Vec<(String, u64)> {
        let elf = object::read::elf::ElfFile64::<object::LittleEndian>::parse(data).unwrap();
        elf.sections()
            .map(|s| match s.flags() {
                SectionFlags::Elf { sh_flags } => (s.name().unwrap().to_owned(), sh_flags),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let (before, after) = (flags(EBPF_OBJECT), flags(copy.bytes()));
    assert_eq!(before.len(), after.len());
    for ((name, old), (_, new)) in before.iter().zip(&after) {
        if sections.contains(&name.as_str()) {
            assert_eq!((old & exec, *new), (exec, old & !exec), "{name}");
        } else {
            assert_eq!(old, new, "{name}");
        }
    }
    // One byte of each of the two headers, nothing else.
    let changed = EBPF_OBJECT.iter().zip(copy.bytes()).filter(|(a, b)| a != b);
    assert_eq!(changed.count(), 2);
    let e = unix_hooks::hide_sections(EBPF_OBJECT, &["cgroup/nope"]).err();
    assert_eq!(e.as_deref(), Some("the object has no section cgroup/nope"));
    assert!(unix_hooks::hide_sections(&EBPF_OBJECT[..100], &sections).is_err());
}

#[test]
fn the_running_kernel_has_the_layout_the_hooks_read() {
    let Ok(btf) = std::fs::read("/sys/kernel/btf/vmlinux") else {
        eprintln!("skipping: no /sys/kernel/btf/vmlinux");
        return;
    };
    match unix_hooks::check_sock_addr_kern(&btf) {
        Ok(()) => {}
        Err(e) if !kernel_at_least(6, 7) => eprintln!("kernel before 6.7: {e}"),
        Err(e) => panic!("{e}"),
    }
    assert!(unix_hooks::check_sock_addr_kern(&btf[..100]).is_err());
}

const BTF_STRINGS: &[u8] = b"\0unsigned int\0bpf_sock_addr_kern\0uaddr\0uaddrlen\0u32\0long\0";

/// The offset of `s` in `BTF_STRINGS`.
fn btf_name(s: &str) -> u32 {
    let needle = [b"\0", s.as_bytes(), b"\0"].concat();
    (BTF_STRINGS
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
        + 1) as u32
}

/// A type's `info` word.
fn btf_info(kind: u32, vlen: u32) -> u32 {
    (kind << 24) | vlen
}

/// A little-endian BTF blob: the header, `types` (the type section's words) and
/// `BTF_STRINGS`.
fn btf_with(types: &[u32]) -> Vec<u8> {
    let types: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut blob = Vec::new();
    blob.extend(0xeb9f_u16.to_le_bytes());
    blob.extend([1, 0]);
    for word in [
        24,
        0,
        types.len() as u32,
        types.len() as u32,
        BTF_STRINGS.len() as u32,
    ] {
        blob.extend(word.to_le_bytes());
    }
    blob.extend(types);
    blob.extend(BTF_STRINGS);
    blob
}

/// Types 1 to 3: INT "unsigned int" (4 bytes, 32 bits), PTR to void, TYPEDEF u32 -> 1.
fn btf_basics() -> Vec<u32> {
    vec![
        btf_name("unsigned int"),
        btf_info(1, 0),
        4,
        32,
        0,
        btf_info(2, 0),
        0,
        btf_name("u32"),
        btf_info(8, 0),
        1,
    ]
}

/// `struct bpf_sock_addr_kern { uaddr; uaddrlen; }`, 40 bytes, its members of types
/// `uaddr_type` and `len_type` at the given bit offsets.
fn btf_struct(uaddr: (u32, u32), uaddrlen: (u32, u32)) -> [u32; 9] {
    [
        btf_name("bpf_sock_addr_kern"),
        btf_info(4, 2),
        40,
        btf_name("uaddr"),
        uaddr.0,
        uaddr.1,
        btf_name("uaddrlen"),
        uaddrlen.0,
        uaddrlen.1,
    ]
}

/// A BTF blob with `u32` (a typedef of a 4-byte int), `void *`, and
/// `struct bpf_sock_addr_kern { void *uaddr; u32 uaddrlen; }` at the given bit offsets.
fn btf_blob(uaddr_bits: u32, uaddrlen_bits: u32) -> Vec<u8> {
    let mut types = btf_basics();
    types.extend(btf_struct((2, uaddr_bits), (3, uaddrlen_bits)));
    btf_with(&types)
}

#[test]
fn a_different_kernel_layout_is_refused() {
    assert_eq!(unix_hooks::check_sock_addr_kern(&btf_blob(64, 256)), Ok(()));
    let moved = unix_hooks::check_sock_addr_kern(&btf_blob(64, 320)).unwrap_err();
    assert!(moved.contains("uaddrlen is at bit 320"), "{moved}");
    let moved = unix_hooks::check_sock_addr_kern(&btf_blob(0, 256)).unwrap_err();
    assert!(moved.contains("uaddr is at bit 0"), "{moved}");
}

#[test]
fn the_btf_check_reads_types_and_members() {
    let check = |types: &[u32]| unix_hooks::check_sock_addr_kern(&btf_with(types));
    let with = |extra: &[u32], uaddr: (u32, u32), uaddrlen: (u32, u32)| {
        let mut types = btf_basics();
        types.extend(extra);
        types.extend(btf_struct(uaddr, uaddrlen));
        check(&types)
    };
    // Types of every other kind before the struct are stepped over by their sizes; a
    // union of the same name is not the struct.
    #[rustfmt::skip]
    let others = [
        0, btf_info(3, 0), 0, 1, 1, 4,          // 4: ARRAY u32[4]
        0, btf_info(6, 2), 4, 1, 0, 1, 1,       // 5: ENUM, 2 values
        0, btf_info(7, 0), 0,                   // 6: FWD
        0, btf_info(13, 1), 1, 0, 1,            // 7: FUNC_PROTO, 1 parameter
        0, btf_info(12, 0), 7,                  // 8: FUNC
        0, btf_info(14, 0), 1, 1,               // 9: VAR
        0, btf_info(15, 1), 4, 9, 0, 4,         // 10: DATASEC, 1 variable
        btf_name("long"), btf_info(16, 0), 8,   // 11: FLOAT
        0, btf_info(17, 0), 9, u32::MAX,        // 12: DECL_TAG
        0, btf_info(18, 0), 2,                  // 13: TYPE_TAG -> void *
        0, btf_info(19, 1), 8, 0, 1, 0,         // 14: ENUM64, 1 value
        btf_name("bpf_sock_addr_kern"), btf_info(5, 1), 8,
        btf_name("uaddrlen"), 1, 0,             // 15: UNION bpf_sock_addr_kern
        0, btf_info(10, 0), 3,                  // 16: CONST u32
        0, btf_info(9, 0), 16,                  // 17: VOLATILE const u32
    ];
    // Qualifiers, typedefs and type tags are seen through.
    assert_eq!(with(&others, (13, 64), (17, 256)), Ok(()));
    // With kind_flag set, an offset's top 8 bits are a bitfield size.
    let mut types = btf_basics();
    types.extend(btf_struct((2, 64), (3, (32 << 24) | 256)));
    types[11] |= 1 << 31;
    assert_eq!(check(&types), Ok(()));
    types[11] &= !(1 << 31);
    let e = check(&types).unwrap_err();
    assert!(
        e.contains(&format!("uaddrlen is at bit {}", (32 << 24) | 256)),
        "{e}"
    );

    // uaddr not a pointer, uaddrlen not a 4-byte int.
    let e = with(&[], (1, 64), (3, 256)).unwrap_err();
    assert!(e.contains("uaddr is at bit 64 (kind 1)"), "{e}");
    let e = with(&[], (2, 64), (2, 256)).unwrap_err();
    assert!(
        e.contains("uaddrlen is at bit 256 (kind 2, 0 bytes)"),
        "{e}"
    );
    let long = [btf_name("long"), btf_info(1, 0), 8, 64];
    let e = with(&long, (2, 64), (4, 256)).unwrap_err();
    assert!(e.contains("(kind 1, 8 bytes)"), "{e}");

    // No struct, or no uaddrlen (kernels before 6.7).
    let e = check(&btf_basics()).unwrap_err();
    assert!(e.contains("no struct bpf_sock_addr_kern"), "{e}");
    let mut types = btf_basics();
    types.extend(&btf_struct((2, 64), (3, 256))[..6]);
    types[11] = btf_info(4, 1);
    let e = check(&types).unwrap_err();
    assert!(e.contains("no member uaddrlen"), "{e}");
}

#[test]
fn malformed_btf_is_an_error() {
    let check = |blob: &[u8]| unix_hooks::check_sock_addr_kern(blob);
    let good = btf_blob(64, 256);
    // Cut anywhere: an error, never a panic.
    for len in 0..good.len() {
        assert!(check(&good[..len]).is_err(), "cut at {len}");
    }
    // Big-endian (or no) BTF.
    let mut bad = good.clone();
    bad[..2].copy_from_slice(&0xeb9f_u16.to_be_bytes());
    assert!(check(&bad).unwrap_err().contains("bad magic"));
    // A type section that ends inside a type.
    let mut types = btf_basics();
    types.extend(&btf_struct((2, 64), (3, 256))[..6]);
    assert!(check(&btf_with(&types)).unwrap_err().contains("truncated"));
    // Kinds BTF does not have.
    for kind in [0, 20, 31] {
        let mut types = btf_basics();
        types.extend([0, btf_info(kind, 0), 0]);
        let e = check(&btf_with(&types)).unwrap_err();
        assert!(e.contains(&format!("unknown type kind {kind}")), "{e}");
    }
    // A member of a type that is not there, a typedef that loops, a name out of range.
    let mut types = btf_basics();
    types.extend(btf_struct((2, 64), (9, 256)));
    assert!(check(&btf_with(&types)).unwrap_err().contains("no type 9"));
    let mut types = btf_basics();
    types[9] = 3;
    types.extend(btf_struct((2, 64), (3, 256)));
    assert!(
        check(&btf_with(&types))
            .unwrap_err()
            .contains("does not resolve")
    );
    let mut types = btf_basics();
    types.extend(btf_struct((2, 64), (3, 256)));
    types[16] = 1000;
    assert!(check(&btf_with(&types)).unwrap_err().contains("no string"));
}

fn key_path(entry: UnixAllow) -> (u32, Vec<u8>) {
    let key = entry.key(7).unwrap();
    let data = key.data();
    assert_eq!(data.cgroup_id, 7u64.to_ne_bytes());
    let bytes = (key.prefix_len() / 8 - 8) as usize;
    (key.prefix_len(), data.path[..bytes].to_vec())
}

#[test]
fn allow_entries_become_prefixes() {
    assert_eq!(
        key_path(UnixAllow::Socket("/run/x.sock".into())),
        (8 * (8 + 12), b"/run/x.sock\0".to_vec())
    );
    assert_eq!(
        key_path(UnixAllow::Dir("/tmp".into())),
        (8 * (8 + 5), b"/tmp/".to_vec())
    );
    assert_eq!(
        key_path(UnixAllow::Dir("/tmp//a/./b/".into())),
        (8 * (8 + 9), b"/tmp/a/b/".to_vec())
    );
    assert_eq!(key_path(UnixAllow::Dir("/".into())).1, b"/".to_vec());
    for bad in [
        UnixAllow::Socket("run/x.sock".into()),
        UnixAllow::Socket("/run/../x.sock".into()),
        UnixAllow::Dir("/a/..".into()),
        UnixAllow::Socket("/".into()),
        UnixAllow::Socket(format!("/{}", "a".repeat(107)).into()),
    ] {
        assert!(bad.key(1).is_err(), "{bad:?}");
    }
    // 107 bytes and the NUL fill sun_path exactly.
    let longest = UnixAllow::Socket(format!("/{}", "a".repeat(106)).into());
    assert_eq!(
        longest.key(1).unwrap().prefix_len(),
        UnixAllowData::FULL_PREFIX_BITS
    );
}

fn record(kind: u32, is_abstract: bool, path: &[u8], len: u32) -> Vec<u8> {
    let mut event = UnixEvent {
        cgroup_id: 42,
        pid: 1234,
        kind,
        is_abstract: u32::from(is_abstract),
        path_len: len,
        path: [0; UNIX_PATH_MAX],
        _pad: 0,
    };
    event.path[..path.len()].copy_from_slice(path);
    // SAFETY: UnixEvent is plain integers without implicit padding.
    unsafe { std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<UnixEvent>()) }
        .to_vec()
}

#[test]
fn events_decode() {
    let e = UnixSocketEvent::decode(&record(UNIX_KIND_CONNECT, false, b"/run/x.sock\0junk", 16))
        .unwrap();
    assert_eq!(
        e,
        UnixSocketEvent {
            cgroup_id: 42,
            pid: 1234,
            kind: UnixEventKind::Connect,
            path: "/run/x.sock".into(),
            is_abstract: false,
        }
    );
    let e = UnixSocketEvent::decode(&record(UNIX_KIND_SENDMSG, true, b"\0name\0x", 7)).unwrap();
    assert_eq!(
        (e.kind, e.path.as_str()),
        (UnixEventKind::Sendmsg, "@name@x")
    );
    let e = UnixSocketEvent::decode(&record(9, false, &[b'a'; UNIX_PATH_MAX], 500)).unwrap();
    assert_eq!(
        (e.kind, e.path.len()),
        (UnixEventKind::Other(9), UNIX_PATH_MAX)
    );
    assert!(UnixSocketEvent::decode(&[0; 20]).is_none());
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let uname = nix::sys::utsname::uname().expect("uname");
    let release = uname.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return true;
    };
    let (a, b): (u32, u32) = (a.parse().unwrap_or(0), b.parse().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// Root, or skip (a failure when `EGRESSD_PRIVILEGED_TESTS=1`, as in the e2e tests).
fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("EGRESSD_PRIVILEGED_TESTS")
            .ok()
            .is_none_or(|v| v != "1"),
        "this test needs root, and EGRESSD_PRIVILEGED_TESTS=1 says it must not be skipped"
    );
    eprintln!("skipping: needs root");
    false
}

const CHILD_ENV: &str = "EGRESSD_UNIX_PROBE";

/// Runs in a child process that `probe` starts in a cgroup: tries each operation of
/// `$EGRESSD_UNIX_PROBE` (`connect\tPATH` or `sendto\tPATH` lines, `@name` abstract)
/// and prints `UNIXPROBE <index> <ok|errno>` for each.
#[test]
#[ignore = "run by unix_hooks_enforce_the_policy in a child process"]
fn unix_probe_child() {
    let Ok(ops) = std::env::var(CHILD_ENV) else {
        return;
    };
    for (i, line) in ops.lines().enumerate() {
        let (op, target) = line.split_once('\t').expect("op\\ttarget");
        if let Some(variant) = op.strip_prefix("connect-") {
            let result = connect_raw(target.as_bytes(), variant == "junk");
            match result {
                Ok(()) => println!("UNIXPROBE {i} ok"),
                Err(e) => println!("UNIXPROBE {i} {}", e.raw_os_error().unwrap_or(-1)),
            }
            continue;
        }
        let addr = match target.strip_prefix('@') {
            Some(name) => UnixAddr::from_abstract_name(name.as_bytes()),
            None => UnixAddr::from_pathname(target),
        }
        .expect("address");
        let result = match op {
            "connect" => UnixStream::connect_addr(&addr).map(drop),
            _ => UnixDatagram::unbound().and_then(|s| s.send_to_addr(b"x", &addr).map(drop)),
        };
        match result {
            Ok(()) => println!("UNIXPROBE {i} ok"),
            Err(e) => println!("UNIXPROBE {i} {}", e.raw_os_error().unwrap_or(-1)),
        }
    }
}

/// connect() to `path` with an address length that stops right after it (no NUL), or
/// (`junk`) that covers a NUL and `/../junk` after it.
fn connect_raw(path: &[u8], junk: bool) -> std::io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let mut bytes = path.to_vec();
    if junk {
        bytes.extend_from_slice(b"\0/../junk");
    }
    assert!(bytes.len() <= sa.sun_path.len());
    for (dst, src) in sa.sun_path.iter_mut().zip(&bytes) {
        *dst = *src as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + bytes.len();
    // SAFETY: plain socket(2), owned right away.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let _sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: `sa` is valid for `len` bytes.
    let rc = unsafe { libc::connect(raw, (&raw const sa).cast(), len as libc::socklen_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs `ops` in a child process in `cgroup` (or in this process's cgroup), from `cwd`;
/// returns its pid and each result (`0` for success, else the errno).
fn probe(
    cgroup: Option<&crate::sandbox::cgroup::Cgroup>,
    cwd: &Path,
    ops: &[(&str, String)],
) -> (u32, Vec<i32>) {
    let spec: Vec<String> = ops.iter().map(|(op, t)| format!("{op}\t{t}")).collect();
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--exact",
        "loader::unix_tests::unix_probe_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, spec.join("\n"))
    .current_dir(cwd);
    if let Some(cgroup) = cgroup {
        let procs = CString::new(cgroup.procs_file().as_os_str().as_bytes()).unwrap();
        // SAFETY: only open/write/close between fork and exec, on memory prepared before.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the probe");
    let pid = child.id();
    let out = child.wait_with_output().expect("probe output");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut results = vec![i32::MIN; ops.len()];
    for line in text.lines() {
        // The harness prints the test's name on the line of the first result.
        let Some(at) = line.find("UNIXPROBE ") else {
            continue;
        };
        let rest = &line[at + "UNIXPROBE ".len()..];
        let (i, r) = rest.split_once(' ').unwrap();
        results[i.parse::<usize>().unwrap()] = if r == "ok" { 0 } else { r.parse().unwrap() };
    }
    assert!(!results.contains(&i32::MIN), "probe output: {text}");
    (pid, results)
}

/// A scratch directory, removed (and a bpffs mounted in it unmounted) on drop.
struct Scratch {
    dir: PathBuf,
    bpffs: Option<PathBuf>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(bpffs) = &self.bpffs {
            let _ = nix::mount::umount2(bpffs, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const OK: i32 = 0;
const EPERM: i32 = libc::EPERM;
const ENOENT: i32 = libc::ENOENT;

#[test]
fn unix_hooks_enforce_the_policy() {
    if !privileged() {
        return;
    }
    let mut loader = Loader::load().expect("loading the programs");
    if let Err(why) = loader.unix_hooks() {
        assert!(
            !kernel_at_least(6, 7),
            "the Unix-socket hooks did not load: {why}"
        );
        eprintln!("skipping: kernel before 6.7 ({why})");
        return;
    }
    let pid = std::process::id();
    let mut scratch = Scratch {
        dir: std::env::temp_dir().join(format!("egressd-unix-test-{pid}")),
        bpffs: None,
    };
    let dir = scratch.dir.clone();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("allowed")).unwrap();
    let p = |name: &str| dir.join(name).display().to_string();
    let _denied = UnixListener::bind(p("denied.sock")).unwrap();
    let _inside = UnixListener::bind(p("allowed/in.sock")).unwrap();
    let _other = UnixListener::bind(p("other.sock")).unwrap();
    let _rel = UnixListener::bind(p("rel.sock")).unwrap();
    let _dgram = UnixDatagram::bind(p("dgram.sock")).unwrap();
    let p107 = format!(
        "{}/{}",
        dir.display(),
        "l".repeat(106 - dir.as_os_str().len())
    );
    assert_eq!(p107.len(), 107);
    let _long = UnixListener::bind(&p107).unwrap();
    let abstract_name = format!("egressd-unix-test-{pid}");
    let _abstract =
        UnixListener::bind_addr(&UnixAddr::from_abstract_name(abstract_name.as_bytes()).unwrap())
            .unwrap();
    let ops: Vec<(&str, String)> = vec![
        ("connect", p("denied.sock")),
        ("connect", p("allowed/in.sock")),
        (
            "connect",
            format!("{}/allowed/../other.sock", dir.display()),
        ),
        ("connect", format!("@{abstract_name}")),
        ("connect", "rel.sock".to_owned()),
        ("sendto", p("dgram.sock")),
        // An exact entry must not allow a longer path (nothing listens: ENOENT if let by).
        ("connect", p("denied.sockx")),
        // The same socket named without a NUL, and with one followed by junk.
        ("connect-nonul", p("denied.sock")),
        ("connect-junk", p("denied.sock")),
        // A 107-byte path, and a 108-byte one (no room for a NUL) that extends it.
        ("connect", p107.clone()),
        ("connect-nonul", format!("{p107}x")),
    ];
    let (denied, inside, dotdot, abstract_, relative, sendto, longer) = (0, 1, 2, 3, 4, 5, 6);

    // Without the programs everything that listens connects: the checks below can fail.
    let (_, plain) = probe(None, &dir, &ops);
    assert_eq!(
        plain,
        [OK, OK, OK, OK, OK, OK, ENOENT, OK, OK, OK, ENOENT],
        "{ops:?}"
    );

    let cgroup =
        crate::sandbox::cgroup::Cgroup::create(&format!("unix-test-{pid}")).expect("cgroup");
    let config = |flags| SandboxConfig {
        proxy_port4: 0,
        proxy_port6: 0,
        dns_port: 0,
        dns_port6: 0,
        flags,
    };
    let links = loader
        .attach(&cgroup, config(FLAG_UNIX_RULES))
        .expect("attach");
    let mut events = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut unix_events = runtime.block_on(async { loader.unix_events() }).unwrap();

    // Nothing allowed yet: every absolute path and the abstract name are refused.
    let (child, r) = probe(Some(&cgroup), &dir, &ops);
    assert_eq!(
        r,
        [
            EPERM, EPERM, EPERM, EPERM, OK, EPERM, EPERM, EPERM, EPERM, EPERM, EPERM
        ],
        "no entries"
    );
    runtime.block_on(async {
        let first = tokio::time::timeout(Duration::from_secs(5), unix_events.next())
            .await
            .expect("an event within 5 s")
            .unwrap();
        events.push(first);
    });
    while let Some(e) = unix_events.try_next() {
        events.push(e);
    }
    let find = |path: &str| events.iter().find(|e| e.path == path).cloned();
    let event = find(&p("denied.sock")).unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(
        event,
        UnixSocketEvent {
            cgroup_id: cgroup.id(),
            pid: child,
            kind: UnixEventKind::Connect,
            path: p("denied.sock"),
            is_abstract: false,
        }
    );
    let event = find(&format!("@{abstract_name}")).unwrap_or_else(|| panic!("{events:#?}"));
    assert!(event.is_abstract && event.pid == child);
    let event = find(&p("dgram.sock")).unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(event.kind, UnixEventKind::Sendmsg);
    assert!(
        find(&format!("{}/allowed/../other.sock", dir.display())).is_some(),
        "{events:#?}"
    );

    // The exact socket and the directory allowed.
    loader
        .set_unix_allow(
            cgroup.id(),
            &[
                UnixAllow::Socket(dir.join("denied.sock")),
                UnixAllow::Dir(dir.join("allowed")),
                UnixAllow::Socket(p107.clone().into()),
            ],
        )
        .unwrap();
    let (_, r) = probe(Some(&cgroup), &dir, &ops);
    assert_eq!(
        r,
        [OK, OK, EPERM, EPERM, OK, EPERM, EPERM, OK, OK, OK, EPERM],
        "entries set"
    );
    assert_eq!(r[dotdot], EPERM);
    assert_eq!(r[longer], EPERM);

    // Abstract names allowed by the flag; the datagram socket added, the directory gone.
    loader
        .sandboxes
        .insert(
            cgroup.id(),
            config(FLAG_UNIX_RULES | FLAG_UNIX_ABSTRACT_ALLOW),
            0,
        )
        .unwrap();
    loader
        .set_unix_allow(
            cgroup.id(),
            &[
                UnixAllow::Socket(dir.join("denied.sock")),
                UnixAllow::Socket(dir.join("dgram.sock")),
            ],
        )
        .unwrap();
    let (_, r) = probe(Some(&cgroup), &dir, &ops);
    assert_eq!(
        r,
        [OK, EPERM, EPERM, OK, OK, OK, EPERM, OK, OK, EPERM, EPERM],
        "abstract allowed"
    );
    assert_eq!((r[inside], r[abstract_], r[sendto]), (EPERM, OK, OK));

    // Without FLAG_UNIX_RULES the hooks let everything through.
    loader.sandboxes.insert(cgroup.id(), config(0), 0).unwrap();
    let (_, r) = probe(Some(&cgroup), &dir, &ops);
    assert_eq!(r, plain, "rules off");
    assert_eq!((r[denied], r[relative]), (OK, OK));

    let counters = loader.counters();
    let count = |name| counters.iter().find(|(n, _)| *n == name).map_or(0, |c| c.1);
    assert!(count("unix_denied") >= 9, "{counters:?}");
    assert!(count("unix_abstract_denied") >= 2, "{counters:?}");

    // Detaching removes the hooks and the cgroup's entries.
    loader.detach(links);
    assert!(loader.unix_allow_keys(cgroup.id()).unwrap().is_empty());
    let (_, r) = probe(Some(&cgroup), &dir, &ops);
    assert_eq!(r, plain, "detached");

    // Pinned links keep the hooks attached; releasing them detaches them.
    let bpffs = dir.join("bpffs");
    std::fs::create_dir(&bpffs).unwrap();
    nix::mount::mount(
        Some("bpf"),
        &bpffs,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mounting a bpffs for the pins");
    scratch.bpffs = Some(bpffs.clone());
    let links = loader
        .attach(&cgroup, config(FLAG_UNIX_RULES))
        .expect("attach again");
    loader
        .set_unix_allow(cgroup.id(), &[UnixAllow::Dir(dir.clone())])
        .unwrap();
    let pinned = loader.pin(links, &bpffs.join("links")).expect("pin");
    for name in UNIX_PROGRAMS.map(|p| p.name) {
        assert!(pinned.dir().join(name).exists(), "{name} is not pinned");
    }
    let (_, r) = probe(Some(&cgroup), &dir, &ops);
    assert_eq!(
        r,
        [OK, OK, EPERM, EPERM, OK, OK, ENOENT, OK, OK, OK, ENOENT],
        "pinned"
    );
    loader.release(pinned);
    assert!(loader.unix_allow_keys(cgroup.id()).unwrap().is_empty());
    let (_, r) = probe(Some(&cgroup), &dir, &ops);
    assert_eq!(r, plain, "released");
    drop(scratch);
}
