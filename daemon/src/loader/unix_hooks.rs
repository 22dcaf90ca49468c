//! Loading and attaching the Unix-socket hooks without aya (which does not know them).
//!
//! Three small pieces: the two program sections and their map relocations, read with the
//! `object` crate; a check of `struct bpf_sock_addr_kern` in the kernel's BTF; and the
//! `bpf()` commands (`BPF_PROG_LOAD`, `BPF_LINK_CREATE`, `BPF_OBJ_PIN`,
//! `BPF_OBJ_GET_INFO_BY_FD`).

use std::{
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use egressd_ebpf_common::sock_addr_kern;
use object::{
    LittleEndian as LE, Object as _, ObjectSection as _, ObjectSymbol as _, RelocationFlags,
    RelocationTarget,
    elf::{EM_BPF, R_BPF_64_64, SHF_EXECINSTR, SectionHeader64},
    read::elf::{ElfFile64, FileHeader as _},
};

/// `BPF_CGROUP_UNIX_CONNECT` in `enum bpf_attach_type` (Linux 6.7).
pub const BPF_CGROUP_UNIX_CONNECT: u32 = 49;
/// `BPF_CGROUP_UNIX_SENDMSG`.
pub const BPF_CGROUP_UNIX_SENDMSG: u32 = 50;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `src_reg` of a 64-bit immediate load that holds a map fd.
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// The kernel's BTF.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// One Unix-socket hook in the object.
#[derive(Clone, Copy, Debug)]
pub struct Program {
    pub name: &'static str,
    pub section: &'static str,
    pub attach_type: u32,
    pub kernel_name: &'static str,
}

/// A hook loaded into the kernel.
#[derive(Debug)]
pub struct Loaded {
    program: Program,
    fd: OwnedFd,
    id: Option<u32>,
}

impl Loaded {
    pub fn name(&self) -> &'static str {
        self.program.name
    }

    pub fn id(&self) -> Option<u32> {
        self.id
    }
}

/// A copy of an object, 8-byte aligned as aya's ELF parser needs.
pub struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    pub fn bytes(&self) -> &[u8] {
        &object::pod::bytes_of_slice(&self.words)[..self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut object::pod::bytes_of_slice_mut(&mut self.words)[..self.len]
    }
}

/// The embedded object: little-endian ELF64 for eBPF.
type Elf<'a> = ElfFile64<'a, LE>;

fn parse_elf(data: &[u8]) -> Result<Elf<'_>, String> {
    let elf = Elf::parse(data).map_err(|e| format!("not a little-endian ELF64 file: {e}"))?;
    if elf.elf_header().e_machine(LE) != EM_BPF {
        return Err("not an eBPF object".into());
    }
    Ok(elf)
}

/// A copy of `object` in which `sections` are not executable (`SHF_EXECINSTR` cleared):
/// aya then treats them as data it does not use.
pub fn hide_sections(object: &[u8], sections: &[&str]) -> Result<AlignedObject, String> {
    let elf = parse_elf(object)?;
    let indices = sections
        .iter()
        .map(|name| {
            elf.section_by_name(name)
                .map(|s| s.index().0)
                .ok_or_else(|| format!("the object has no section {name}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // `Elf::parse` checked that the section header table is in range and made of
    // `SectionHeader64`s; the copy's table is where the original's is.
    let table_at = elf.elf_header().e_shoff(LE) as usize;
    let count = elf.elf_section_table().len();
    let mut copy = AlignedObject {
        words: vec![0; object.len().div_ceil(8)],
        len: object.len(),
    };
    copy.bytes_mut().copy_from_slice(object);
    let (headers, _) = object::pod::slice_from_bytes_mut::<SectionHeader64<LE>>(
        &mut copy.bytes_mut()[table_at..],
        count,
    )
    .map_err(|()| "the section headers are misaligned".to_string())?;
    for index in indices {
        let flags = &mut headers[index].sh_flags;
        flags.set(LE, flags.get(LE) & !u64::from(SHF_EXECINSTR));
    }
    Ok(copy)
}

/// Loads `programs` from `object` (the original, unmodified one), their map references
/// resolved to the maps aya created for `ebpf`. Fails, saying why, when the kernel's
/// layout differs from what the programs read or the kernel refuses them.
pub fn load(object: &[u8], ebpf: &aya::Ebpf, programs: &[Program]) -> Result<Vec<Loaded>, String> {
    check_kernel_layout()?;
    let elf = parse_elf(object).map_err(|e| format!("reading the embedded eBPF object: {e}"))?;
    let mut loaded = Vec::new();
    for program in programs {
        let (mut insns, relocations) = program_code(&elf, program.section, program.name)
            .map_err(|e| format!("reading {} from the embedded object: {e}", program.name))?;
        for (at, map) in relocations {
            let fd = ebpf.map(&map).and_then(map_fd).ok_or_else(|| {
                format!("{} uses map {map}, which aya did not create", program.name)
            })?;
            let insn = &mut insns[at..at + 16];
            if insn[0] != 0x18 {
                return Err(format!(
                    "{}: a map relocation at instruction {} is not a 64-bit load",
                    program.name,
                    at / 8
                ));
            }
            insn[1] = (insn[1] & 0x0f) | (BPF_PSEUDO_MAP_FD << 4);
            insn[4..8].copy_from_slice(&fd.as_raw_fd().to_le_bytes());
            insn[12..16].copy_from_slice(&0i32.to_le_bytes());
        }
        let fd = prog_load(program, &insns)?;
        let id = prog_id(fd.as_fd());
        loaded.push(Loaded {
            program: *program,
            fd,
            id,
        });
    }
    Ok(loaded)
}

/// The maps `program` references in `object` (for tests).
#[cfg(test)]
pub fn program_maps(object: &[u8], program: &Program) -> Result<Vec<String>, String> {
    let (_, relocations) = program_code(&parse_elf(object)?, program.section, program.name)?;
    Ok(relocations.into_iter().map(|(_, name)| name).collect())
}

/// A map a program references: (byte offset of the 64-bit load, map name).
type MapReference = (usize, String);

/// The instructions of `function`, alone in `section`, and its map references as (byte
/// offset of the instruction, map name). Anything else that needs linking (a call into
/// `.text`, global data) is an error: the hooks are built without.
fn program_code(
    elf: &Elf<'_>,
    section: &str,
    function: &str,
) -> Result<(Vec<u8>, Vec<MapReference>), String> {
    let code = elf
        .section_by_name(section)
        .ok_or_else(|| format!("no section {section}"))?;
    let insns = code.data().map_err(|e| format!("section {section}: {e}"))?;
    // The function must be the whole section.
    let symbol = elf
        .symbols()
        .find(|s| s.name() == Ok(function))
        .ok_or_else(|| format!("no symbol {function}"))?;
    if symbol.section_index() != Some(code.index())
        || symbol.address() != 0
        || symbol.size() != code.size()
    {
        return Err(format!("{function} is not alone in section {section}"));
    }
    let maps = elf.section_by_name("maps").map(|s| s.index());
    let mut relocations = Vec::new();
    for (offset, relocation) in code.relocations() {
        let symbol = match relocation.target() {
            RelocationTarget::Symbol(index) => elf.symbol_by_index(index).ok(),
            _ => None,
        };
        let name = symbol.as_ref().and_then(|s| s.name().ok()).unwrap_or("");
        let kind = match relocation.flags() {
            RelocationFlags::Elf { r_type } => r_type,
            _ => 0,
        };
        let to_map = maps.is_some() && symbol.and_then(|s| s.section_index()) == maps;
        if kind != R_BPF_64_64 || !to_map {
            return Err(format!(
                "relocation to {name} (type {kind}) at byte {offset}: only map references \
                 are supported (is a function not inlined?)"
            ));
        }
        if !offset.is_multiple_of(8) || offset.saturating_add(16) > code.size() {
            return Err(format!("relocation at byte {offset} is out of range"));
        }
        relocations.push((offset as usize, name.to_owned()));
    }
    Ok((insns.to_vec(), relocations))
}

fn map_fd(map: &aya::maps::Map) -> Option<BorrowedFd<'_>> {
    use aya::maps::Map;
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::RingBuf(m) => Some(m.fd().as_fd()),
        _ => None,
    }
}

fn bpf(cmd: libc::c_long, attr: *mut u8, size: usize) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` points to `size` bytes of an initialised attribute block for `cmd`,
    // whose pointers (if any) are valid for the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The head of `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

fn prog_load(program: &Program, insns: &[u8]) -> Result<OwnedFd, String> {
    let license = c"GPL";
    let mut name = [0u8; 16];
    let kernel_name = program.kernel_name.as_bytes();
    name[..kernel_name.len().min(15)].copy_from_slice(&kernel_name[..kernel_name.len().min(15)]);
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: (insns.len() / 8) as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            expected_attach_type: program.attach_type,
            ..Default::default()
        };
        if let Some(log) = log {
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
        }
        bpf(
            BPF_PROG_LOAD,
            (&raw mut attr).cast(),
            size_of::<ProgLoadAttr>(),
        )
    };
    match attempt(None) {
        // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; 1 << 20];
            let _ = attempt(Some(&mut log));
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let hint = if e.raw_os_error() == Some(libc::EINVAL) && tail.is_empty() {
                " (the kernel does not know the attach type: cgroup Unix-socket hooks need \
                 Linux 6.7 or newer)"
            } else {
                ""
            };
            let mut msg = format!("the kernel refused {}: {e}{hint}", program.name);
            if !tail.is_empty() {
                msg.push_str("; verifier: ");
                msg.push_str(&tail.join(" | "));
            }
            Err(msg)
        }
    }
}

/// The kernel's id of program `fd`.
fn prog_id(fd: BorrowedFd<'_>) -> Option<u32> {
    // The first two fields of `struct bpf_prog_info`: type, id.
    let mut info = [0u32; 2];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        (&raw mut attr).cast(),
        size_of::<InfoAttr>(),
    )
    .ok()?;
    Some(info[1])
}

/// Attaches `program` to the cgroup directory `cgroup` with a BPF link; closing the
/// returned descriptor (unless the link is pinned) detaches it.
pub fn link_create(program: &Loaded, cgroup: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct LinkCreateAttr {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
    }
    let mut attr = LinkCreateAttr {
        prog_fd: program.fd.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: program.program.attach_type,
        flags: 0,
    };
    let fd = bpf(
        BPF_LINK_CREATE,
        (&raw mut attr).cast(),
        size_of::<LinkCreateAttr>(),
    )?;
    // SAFETY: BPF_LINK_CREATE returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the BPF object `fd` (a link) at `path` on bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    #[repr(C)]
    struct PinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let mut attr = PinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, (&raw mut attr).cast(), size_of::<PinAttr>()).map(|_| ())
}

/// Checks the running kernel's `struct bpf_sock_addr_kern` against the offsets the
/// programs read (`egressd_ebpf_common::sock_addr_kern`).
fn check_kernel_layout() -> Result<(), String> {
    let btf = std::fs::read(VMLINUX_BTF).map_err(|e| {
        format!(
            "reading the kernel's BTF ({VMLINUX_BTF}: {e}), needed to check the layout \
             of struct bpf_sock_addr_kern that the hooks read"
        )
    })?;
    check_sock_addr_kern(&btf)
}

/// Checks `struct bpf_sock_addr_kern` in the BTF blob `btf`: `uaddr` must be a pointer
/// at `sock_addr_kern::UADDR` and `uaddrlen` a 4-byte integer at
/// `sock_addr_kern::UADDRLEN`.
/// Checks `struct bpf_sock_addr_kern` in the BTF blob `btf`: `uaddr` must be a pointer
/// at `sock_addr_kern::UADDR` and `uaddrlen` a 4-byte integer at
/// `sock_addr_kern::UADDRLEN`.
pub fn check_sock_addr_kern(btf: &[u8]) -> Result<(), String> {
    let btf = Btf::parse(btf).map_err(|e| format!("the kernel's BTF: {e}"))?;
    let found = btf
        .types
        .iter()
        .find(|t| t.kind == BTF_KIND_STRUCT && btf.name(t.name) == Ok("bpf_sock_addr_kern"))
        .ok_or("the kernel's BTF has no struct bpf_sock_addr_kern")?;
    let members = btf.members(found).collect::<Result<Vec<_>, _>>()?;
    let member = |name: &str| {
        members
            .iter()
            .find(|m| m.0 == name)
            .copied()
            .ok_or_else(|| {
                format!(
                    "struct bpf_sock_addr_kern has no member {name} (uaddrlen came with the \
                     cgroup Unix-socket hooks in Linux 6.7)"
                )
            })
    };
    let (_, uaddr_bits, uaddr_type) = member("uaddr")?;
    let (_, len_bits, len_type) = member("uaddrlen")?;
    let (uaddr_kind, _) = btf.resolve(uaddr_type)?;
    let (len_kind, len_size) = btf.resolve(len_type)?;
    if uaddr_bits != sock_addr_kern::UADDR as u32 * 8 || uaddr_kind != BTF_KIND_PTR {
        return Err(format!(
            "struct bpf_sock_addr_kern differs from what the Unix-socket hooks read: uaddr \
             is at bit {uaddr_bits} (kind {uaddr_kind}), expected a pointer at byte {}",
            sock_addr_kern::UADDR
        ));
    }
    if len_bits != sock_addr_kern::UADDRLEN as u32 * 8 || len_kind != BTF_KIND_INT || len_size != 4
    {
        return Err(format!(
            "struct bpf_sock_addr_kern differs from what the Unix-socket hooks read: \
             uaddrlen is at bit {len_bits} (kind {len_kind}, {len_size} bytes), expected a \
             4-byte integer at byte {}",
            sock_addr_kern::UADDRLEN
        ));
    }
    Ok(())
}

// A BTF reader of its own, as small as the check above needs. aya-obj (0.3, through aya)
// parses BTF (`aya_obj::btf::Btf::parse`) and finds a type's id by name, but keeps the
// rest crate-private: looking a type up by id, a struct's members and their offsets, and
// resolving typedefs. The format is in the kernel's Documentation/bpf/btf.rst.

const BTF_KIND_INT: u32 = 1;
const BTF_KIND_PTR: u32 = 2;
const BTF_KIND_STRUCT: u32 = 4;

fn u32_at(data: &[u8], at: usize) -> Result<u32, String> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

/// One type: the common `struct btf_type` and what follows it.
struct BtfType<'a> {
    name: u32,
    kind: u32,
    info: u32,
    /// `size` (INT, STRUCT, ...) or `type` (PTR, TYPEDEF, qualifiers).
    size_or_type: u32,
    /// What follows the header: a struct's members are 12 bytes each.
    extra: &'a [u8],
}

/// A little-endian BTF blob's types (type id `i` at index `i - 1`) and strings.
struct Btf<'a> {
    types: Vec<BtfType<'a>>,
    strings: &'a [u8],
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, String> {
        if data.get(..2) != Some(&0xeb9f_u16.to_le_bytes()[..]) {
            return Err("bad magic (not little-endian BTF)".into());
        }
        let word = |at| u32_at(data, at).map(|w| w as usize);
        let (header_len, type_off, type_len) = (word(4)?, word(8)?, word(12)?);
        let (str_off, str_len) = (word(16)?, word(20)?);
        let section = |off: usize, len: usize| {
            data.get(header_len + off..header_len + off + len)
                .ok_or("a section is out of range")
        };
        let (mut rest, strings) = (section(type_off, type_len)?, section(str_off, str_len)?);
        let mut types = Vec::new();
        while !rest.is_empty() {
            let info = u32_at(rest, 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra = match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF..FUNC, FLOAT, TYPE_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                kind => return Err(format!("unknown type kind {kind}")),
            };
            types.push(BtfType {
                name: u32_at(rest, 0)?,
                kind,
                info,
                size_or_type: u32_at(rest, 8)?,
                extra: rest
                    .get(12..12 + extra)
                    .ok_or_else(|| format!("type {} is truncated", types.len() + 1))?,
            });
            rest = &rest[12 + extra..];
        }
        Ok(Self { types, strings })
    }

    fn name(&self, at: u32) -> Result<&'a str, String> {
        let rest = self.strings.get(at as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0);
        end.and_then(|end| std::str::from_utf8(&rest[..end]).ok())
            .ok_or_else(|| format!("the kernel's BTF: no string at {at}"))
    }

    fn get(&self, id: u32) -> Result<&BtfType<'a>, String> {
        id.checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .ok_or_else(|| format!("the kernel's BTF: no type {id}"))
    }

    /// (name, bit offset, type id) of each member of `ty`, a struct.
    fn members<'s>(
        &'s self,
        ty: &'s BtfType<'a>,
    ) -> impl Iterator<Item = Result<(&'a str, u32, u32), String>> + 's {
        // With `kind_flag` set, the top 8 bits of an offset are a bitfield's size.
        let mask = if ty.info >> 31 == 1 { 0x00ff_ffff } else { !0 };
        ty.extra.chunks_exact(12).map(move |m| {
            let name = self.name(u32_at(m, 0)?)?;
            Ok((name, u32_at(m, 8)? & mask, u32_at(m, 4)?))
        })
    }

    /// The kind and size of type `id` once typedefs and qualifiers are seen through.
    fn resolve(&self, mut id: u32) -> Result<(u32, u32), String> {
        for _ in 0..32 {
            let ty = self.get(id)?;
            match ty.kind {
                // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG
                8..=11 | 18 => id = ty.size_or_type,
                kind => return Ok((kind, ty.size_or_type)),
            }
        }
        Err(format!("the kernel's BTF: type {id} does not resolve"))
    }
}
