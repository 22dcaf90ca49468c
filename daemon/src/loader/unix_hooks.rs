//! Loading and attaching the Unix-socket hooks without aya (which does not know them).
//!
//! Three small pieces: an ELF64 reader for the two program sections and their map
//! relocations, a check of `struct bpf_sock_addr_kern` in the kernel's BTF, and the
//! `bpf()` commands (`BPF_PROG_LOAD`, `BPF_LINK_CREATE`, `BPF_OBJ_PIN`,
//! `BPF_OBJ_GET_INFO_BY_FD`).

use std::{
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use egressd_ebpf_common::sock_addr_kern;

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
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `self` is borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// A copy of `object` in which `sections` are not executable (`SHF_EXECINSTR` cleared):
/// aya then treats them as data it does not use.
pub fn hide_sections(object: &[u8], sections: &[&str]) -> Result<AlignedObject, String> {
    let elf = Elf::parse(object)?;
    let mut headers = Vec::new();
    for name in sections {
        let (_, header) = elf
            .section(name)
            .ok_or_else(|| format!("the object has no section {name}"))?;
        headers.push(header.at);
    }
    let mut copy = AlignedObject {
        words: vec![0; object.len().div_ceil(8)],
        len: object.len(),
    };
    copy.bytes_mut().copy_from_slice(object);
    const SHF_EXECINSTR: u64 = 0x4;
    for at in headers {
        let flags_at = at + 8;
        let bytes = copy.bytes_mut();
        let flags = u64::from_le_bytes(bytes[flags_at..flags_at + 8].try_into().expect("8"));
        bytes[flags_at..flags_at + 8].copy_from_slice(&(flags & !SHF_EXECINSTR).to_le_bytes());
    }
    Ok(copy)
}

/// Loads `programs` from `object` (the original, unmodified one), their map references
/// resolved to the maps aya created for `ebpf`. Fails, saying why, when the kernel's
/// layout differs from what the programs read or the kernel refuses them.
pub fn load(object: &[u8], ebpf: &aya::Ebpf, programs: &[Program]) -> Result<Vec<Loaded>, String> {
    check_kernel_layout()?;
    let elf = Elf::parse(object).map_err(|e| format!("reading the embedded eBPF object: {e}"))?;
    let mut loaded = Vec::new();
    for program in programs {
        let (mut insns, relocations) = elf
            .program(program.section, program.name)
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
    let (_, relocations) = Elf::parse(object)?.program(program.section, program.name)?;
    Ok(relocations.into_iter().map(|(_, name)| name).collect())
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
pub fn check_sock_addr_kern(btf: &[u8]) -> Result<(), String> {
    let types = Btf::parse(btf)?;
    let id = types
        .find_struct("bpf_sock_addr_kern")?
        .ok_or("the kernel's BTF has no struct bpf_sock_addr_kern")?;
    let members = types.members(id)?;
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
    const BTF_KIND_INT: u32 = 1;
    const BTF_KIND_PTR: u32 = 2;
    let (uaddr_kind, _) = types.resolve(uaddr_type)?;
    let (len_kind, len_size) = types.resolve(len_type)?;
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

fn u16_at(data: &[u8], at: usize) -> Result<u16, String> {
    data.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, String> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

fn u64_at(data: &[u8], at: usize) -> Result<u64, String> {
    data.get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

fn c_str(data: &[u8], at: usize) -> Result<&str, String> {
    let rest = data
        .get(at..)
        .ok_or_else(|| format!("string offset {at} out of range"))?;
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| format!("unterminated string at {at}"))?;
    std::str::from_utf8(&rest[..end]).map_err(|_| format!("string at {at} is not UTF-8"))
}

/// The type section of a little-endian BTF blob, indexed by type id.
struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Offset in `types` of type id `i + 1`.
    offsets: Vec<usize>,
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, String> {
        let e = |m: String| format!("the kernel's BTF: {m}");
        if u16_at(data, 0).map_err(e)? != 0xeb9f {
            return Err("the kernel's BTF: bad magic (not little-endian BTF)".into());
        }
        let hdr_len = u32_at(data, 4).map_err(e)? as usize;
        let type_off = u32_at(data, 8).map_err(e)? as usize;
        let type_len = u32_at(data, 12).map_err(e)? as usize;
        let str_off = u32_at(data, 16).map_err(e)? as usize;
        let str_len = u32_at(data, 20).map_err(e)? as usize;
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or_else(|| "the kernel's BTF: a section is out of range".to_string())
        };
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let mut offsets = Vec::new();
        let mut at = 0;
        while at < types.len() {
            offsets.push(at);
            let info = u32_at(types, at + 4).map_err(e)?;
            let vlen = (info & 0xffff) as usize;
            let extra = match (info >> 24) & 0x1f {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF..FUNC, FLOAT, TYPE_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                kind => return Err(e(format!("unknown type kind {kind}"))),
            };
            at += 12 + extra;
        }
        Ok(Self {
            types,
            strings,
            offsets,
        })
    }

    fn header(&self, id: u32) -> Result<(usize, u32, u32, u32), String> {
        let at = *id
            .checked_sub(1)
            .and_then(|i| self.offsets.get(i as usize))
            .ok_or_else(|| format!("the kernel's BTF: no type {id}"))?;
        Ok((
            at,
            u32_at(self.types, at)?,
            u32_at(self.types, at + 4)?,
            u32_at(self.types, at + 8)?,
        ))
    }

    fn find_struct(&self, name: &str) -> Result<Option<u32>, String> {
        for id in 1..=self.offsets.len() as u32 {
            let (_, name_off, info, _) = self.header(id)?;
            if (info >> 24) & 0x1f == 4 && c_str(self.strings, name_off as usize)? == name {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// (name, bit offset, type id) of each member of struct `id`.
    fn members(&self, id: u32) -> Result<Vec<(&'a str, u32, u32)>, String> {
        let (at, _, info, _) = self.header(id)?;
        let bitfields = info >> 31 == 1;
        let mut members = Vec::new();
        for i in 0..(info & 0xffff) as usize {
            let m = at + 12 + 12 * i;
            let name = c_str(self.strings, u32_at(self.types, m)? as usize)?;
            let offset = u32_at(self.types, m + 8)?;
            let bits = if bitfields {
                offset & 0x00ff_ffff
            } else {
                offset
            };
            members.push((name, bits, u32_at(self.types, m + 4)?));
        }
        Ok(members)
    }

    /// The kind and size of type `id` once typedefs and qualifiers are seen through.
    fn resolve(&self, mut id: u32) -> Result<(u32, u32), String> {
        for _ in 0..32 {
            let (_, _, info, size_or_type) = self.header(id)?;
            match (info >> 24) & 0x1f {
                // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG
                8..=11 | 18 => id = size_or_type,
                kind => return Ok((kind, size_or_type)),
            }
        }
        Err(format!("the kernel's BTF: type {id} does not resolve"))
    }
}

/// A map a program references: (byte offset of the 64-bit load, map name).
type MapReference = (usize, String);

/// What is needed of a section header.
#[derive(Clone, Copy)]
struct Section {
    /// Where the header is in the file.
    at: usize,
    name: u32,
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
    info: u32,
}

/// A little-endian ELF64 eBPF object.
struct Elf<'a> {
    data: &'a [u8],
    sections: Vec<Section>,
    names: Section,
}

impl<'a> Elf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, String> {
        const EM_BPF: u16 = 247;
        if data.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
            return Err("not a little-endian ELF64 file".into());
        }
        if u16_at(data, 18)? != EM_BPF {
            return Err("not an eBPF object".into());
        }
        let shoff = u64_at(data, 0x28)? as usize;
        let shentsize = u16_at(data, 0x3a)? as usize;
        let shnum = u16_at(data, 0x3c)? as usize;
        let shstrndx = u16_at(data, 0x3e)? as usize;
        if shentsize < 64 {
            return Err(format!("section headers of {shentsize} bytes"));
        }
        let mut sections = Vec::with_capacity(shnum);
        for i in 0..shnum {
            let at = shoff + i * shentsize;
            let section = Section {
                at,
                name: u32_at(data, at)?,
                kind: u32_at(data, at + 4)?,
                offset: u64_at(data, at + 24)? as usize,
                size: u64_at(data, at + 32)? as usize,
                link: u32_at(data, at + 40)?,
                info: u32_at(data, at + 44)?,
            };
            if section.kind != 8 /* SHT_NOBITS */ && data.get(section.offset..section.offset + section.size).is_none()
            {
                return Err(format!("section {i} is out of range"));
            }
            sections.push(section);
        }
        let names = *sections.get(shstrndx).ok_or("no section-name table")?;
        Ok(Self {
            data,
            sections,
            names,
        })
    }

    fn bytes(&self, section: &Section) -> &'a [u8] {
        &self.data[section.offset..section.offset + section.size]
    }

    fn name(&self, section: &Section) -> Result<&'a str, String> {
        c_str(self.bytes(&self.names), section.name as usize)
    }

    fn section(&self, name: &str) -> Option<(usize, Section)> {
        self.sections
            .iter()
            .enumerate()
            .find(|(_, s)| self.name(s).is_ok_and(|n| n == name))
            .map(|(i, s)| (i, *s))
    }

    /// The instructions of `function`, alone in `section`, and its map references as
    /// (byte offset of the instruction, map name). Anything else that needs linking
    /// (a call into `.text`, global data) is an error: the hooks are built without.
    fn program(
        &self,
        section: &str,
        function: &str,
    ) -> Result<(Vec<u8>, Vec<MapReference>), String> {
        const SHT_SYMTAB: u32 = 2;
        const SHT_REL: u32 = 9;
        const R_BPF_64_64: u32 = 1;
        let (index, code) = self
            .section(section)
            .ok_or_else(|| format!("no section {section}"))?;
        let symtab = *self
            .sections
            .iter()
            .find(|s| s.kind == SHT_SYMTAB)
            .ok_or("no symbol table")?;
        let strtab = *self
            .sections
            .get(symtab.link as usize)
            .ok_or("no symbol string table")?;
        let symbols = self.bytes(&symtab);
        let symbol = |i: usize| -> Result<(&'a str, u16, u64, u64), String> {
            let at = i * 24;
            let name = c_str(self.bytes(&strtab), u32_at(symbols, at)? as usize)?;
            Ok((
                name,
                u16_at(symbols, at + 6)?,
                u64_at(symbols, at + 8)?,
                u64_at(symbols, at + 16)?,
            ))
        };
        // The function must be the whole section.
        let found = (0..symbols.len() / 24)
            .map(symbol)
            .filter_map(Result::ok)
            .find(|(name, ..)| *name == function);
        match found {
            Some((_, shndx, 0, size)) if shndx as usize == index && size as usize == code.size => {}
            Some(_) => return Err(format!("{function} is not alone in section {section}")),
            None => return Err(format!("no symbol {function}")),
        }
        let maps = self.section("maps").map(|(i, _)| i);
        let mut relocations = Vec::new();
        for rel in self
            .sections
            .iter()
            .filter(|s| s.kind == SHT_REL && s.info as usize == index)
        {
            let rels = self.bytes(rel);
            for r in 0..rels.len() / 16 {
                let offset = u64_at(rels, r * 16)? as usize;
                let info = u64_at(rels, r * 16 + 8)?;
                let (name, shndx, ..) = symbol((info >> 32) as usize)?;
                if info as u32 != R_BPF_64_64 || Some(shndx as usize) != maps {
                    return Err(format!(
                        "relocation to {name} (type {}) at byte {offset}: only map references \
                         are supported (is a function not inlined?)",
                        info as u32
                    ));
                }
                if !offset.is_multiple_of(8) || offset + 16 > code.size {
                    return Err(format!("relocation at byte {offset} is out of range"));
                }
                relocations.push((offset, name.to_owned()));
            }
        }
        Ok((self.bytes(&code).to_vec(), relocations))
    }
}
