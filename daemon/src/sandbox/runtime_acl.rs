//! Container runtime sockets closed to a job attached with `egressd attach --job`.
//!
//! An attached job keeps its user, groups and mount namespace, so on a GitHub-hosted runner it
//! keeps the `docker` group and `/var/run/docker.sock`: `docker run --network host ...` would
//! leave every firewall. A path rule in the cgroup's Unix hooks would not do (a symlink or a
//! relative path names the same socket another way), so the socket itself is closed: its
//! POSIX ACL gets an entry for the job's user with no permission. ACL entries for a named
//! user are checked before any group's, and the check is on the socket's inode, so no path
//! to it helps. The original ACL (or its absence) is kept and put back when the job is
//! detached; a daemon that dies leaves it closed (fail closed) and restores it after a
//! restart from its state file.
//!
//! The ACL is the `system.posix_acl_access` extended attribute (Linux's binary format: a
//! version word, then `(tag, perm, id)` entries sorted by tag and id).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The extended attribute holding the access ACL.
const XATTR: &str = "system.posix_acl_access";
/// `POSIX_ACL_XATTR_VERSION`.
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
/// The id of entries that have none.
const UNDEFINED_ID: u32 = u32::MAX;

/// A socket closed to a user, and how to open it again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Closed {
    /// The socket (as found, symlinks resolved).
    pub path: PathBuf,
    /// Its ACL attribute before, base64; `None` when it had none.
    pub original: Option<String>,
}

/// Closes every socket of `paths` that exists to `uid`; returns what was closed and, for
/// each path that could not be closed, why. Paths naming the same socket are closed once.
pub fn close(uid: u32, paths: &[PathBuf]) -> (Vec<Closed>, Vec<String>) {
    let mut closed: Vec<Closed> = Vec::new();
    let mut failures = Vec::new();
    for path in paths {
        let Ok(real) = std::fs::canonicalize(path) else {
            continue; // no such socket here
        };
        if closed.iter().any(|c| c.path == real) {
            continue;
        }
        match close_one(uid, &real) {
            Ok(Some(c)) => closed.push(c),
            Ok(None) => {}
            Err(e) => failures.push(format!("{}: {e:#}", real.display())),
        }
    }
    (closed, failures)
}

/// Puts back the ACLs of `closed`; returns why any could not be.
pub fn reopen(closed: &[Closed]) -> Vec<String> {
    let mut failures = Vec::new();
    for c in closed {
        let result = match &c.original {
            Some(text) => base64::engine::general_purpose::STANDARD
                .decode(text)
                .context("the saved ACL is not base64")
                .and_then(|bytes| set_xattr(&c.path, &bytes)),
            None => remove_xattr(&c.path),
        };
        if let Err(e) = result {
            failures.push(format!("{}: {e:#}", c.path.display()));
        }
    }
    failures
}

fn close_one(uid: u32, path: &Path) -> anyhow::Result<Option<Closed>> {
    let meta = std::fs::metadata(path).context("reading it")?;
    if !meta.file_type().is_socket() {
        return Ok(None);
    }
    if meta.uid() == uid {
        bail!("it belongs to the job's user, whom an ACL cannot shut out");
    }
    let original = get_xattr(path)?;
    let entries = match &original {
        Some(bytes) => parse(bytes)?,
        None => from_mode(meta.mode()),
    };
    set_xattr(path, &encode(&deny_user(entries, uid)))?;
    Ok(Some(Closed {
        path: path.to_path_buf(),
        original: original.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
    }))
}

/// One ACL entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// The minimal ACL a file mode stands for.
fn from_mode(mode: u32) -> Vec<Entry> {
    let perm = |shift: u32| u16::try_from((mode >> shift) & 0o7).unwrap_or(0);
    vec![
        Entry {
            tag: USER_OBJ,
            perm: perm(6),
            id: UNDEFINED_ID,
        },
        Entry {
            tag: GROUP_OBJ,
            perm: perm(3),
            id: UNDEFINED_ID,
        },
        Entry {
            tag: OTHER,
            perm: perm(0),
            id: UNDEFINED_ID,
        },
    ]
}

/// `entries` with `uid` given no permission, and the mask an extended ACL needs (the group
/// class's union, so every other entry keeps its effective permission).
fn deny_user(mut entries: Vec<Entry>, uid: u32) -> Vec<Entry> {
    match entries.iter_mut().find(|e| e.tag == USER && e.id == uid) {
        Some(e) => e.perm = 0,
        None => entries.push(Entry {
            tag: USER,
            perm: 0,
            id: uid,
        }),
    }
    if !entries.iter().any(|e| e.tag == MASK) {
        let union = entries
            .iter()
            .filter(|e| matches!(e.tag, USER | GROUP_OBJ | GROUP))
            .fold(0, |acc, e| acc | e.perm);
        entries.push(Entry {
            tag: MASK,
            perm: union,
            id: UNDEFINED_ID,
        });
    }
    entries.sort_by_key(|e| (e.tag, e.id));
    entries
}

fn parse(bytes: &[u8]) -> anyhow::Result<Vec<Entry>> {
    let (header, body) = bytes
        .split_first_chunk::<4>()
        .context("the ACL attribute is shorter than its header")?;
    if u32::from_le_bytes(*header) != VERSION || body.len() % 8 != 0 {
        bail!("the ACL attribute is not a version-2 POSIX ACL");
    }
    Ok(body
        .chunks_exact(8)
        .map(|c| Entry {
            tag: u16::from_le_bytes([c[0], c[1]]),
            perm: u16::from_le_bytes([c[2], c[3]]),
            id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = VERSION.to_le_bytes().to_vec();
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    out
}

fn c_path(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).context("the path has a NUL byte")
}

/// The ACL attribute, or `None` when the file has none.
fn get_xattr(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let (path_c, name) = (c_path(path)?, CString::new(XATTR)?);
    let mut buf = vec![0u8; 4 + 8 * 64];
    // SAFETY: both strings are NUL-terminated; the buffer and its length match.
    let n = unsafe {
        libc::getxattr(
            path_c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(err).context("reading its ACL"),
        };
    }
    buf.truncate(usize::try_from(n).unwrap_or(0));
    Ok(Some(buf))
}

fn set_xattr(path: &Path, value: &[u8]) -> anyhow::Result<()> {
    let (path_c, name) = (c_path(path)?, CString::new(XATTR)?);
    // SAFETY: both strings are NUL-terminated; the value and its length match.
    let rc = unsafe {
        libc::setxattr(
            path_c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("setting its ACL (does the file system support POSIX ACLs?)");
    }
    Ok(())
}

fn remove_xattr(path: &Path) -> anyhow::Result<()> {
    let (path_c, name) = (c_path(path)?, CString::new(XATTR)?);
    // SAFETY: both strings are NUL-terminated.
    let rc = unsafe { libc::removexattr(path_c.as_ptr(), name.as_ptr()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENODATA) {
            return Err(err).context("removing its ACL");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denied_user_gets_an_entry_and_the_group_class_keeps_its_permissions() {
        let entries = deny_user(from_mode(0o660), 1001);
        assert_eq!(
            entries,
            vec![
                Entry {
                    tag: USER_OBJ,
                    perm: 6,
                    id: UNDEFINED_ID
                },
                Entry {
                    tag: USER,
                    perm: 0,
                    id: 1001
                },
                Entry {
                    tag: GROUP_OBJ,
                    perm: 6,
                    id: UNDEFINED_ID
                },
                Entry {
                    tag: MASK,
                    perm: 6,
                    id: UNDEFINED_ID
                },
                Entry {
                    tag: OTHER,
                    perm: 0,
                    id: UNDEFINED_ID
                },
            ]
        );
        assert_eq!(parse(&encode(&entries)).unwrap(), entries);
        // An existing entry for the user is turned off, not doubled.
        let again = deny_user(entries.clone(), 1001);
        assert_eq!(again, entries);
        assert!(parse(b"\x01\x00\x00\x00").is_err());
        assert!(parse(b"\x02\x00").is_err());
    }
}
