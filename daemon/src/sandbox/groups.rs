//! The sandbox's group: never one that grants root-equivalent access.
//!
//! On GitHub-hosted runners the runner user's primary group is `docker`, so `sudo egressd
//! exec` would hand the agent `/var/run/docker.sock`, and `docker run --network host` leaves
//! every firewall behind. The command never keeps supplementary groups (the sandbox's init
//! sets exactly one), and the one group it runs with is replaced when it is privileged: by
//! name (`docker`, `sudo`, `wheel`, ...) or because it owns a socket or device that grants
//! root (the Docker, containerd, Podman, LXD, Incus and libvirt sockets, `/dev/kvm`, disks).

use std::{os::unix::fs::MetadataExt as _, path::Path};

/// Groups that grant root, or root-equivalent access, to their members on common
/// distributions.
const PRIVILEGED_NAMES: &[&str] = &[
    "root",
    "docker",
    "sudo",
    "wheel",
    "admin",
    "adm",
    "lxd",
    "incus",
    "incus-admin",
    "libvirt",
    "libvirtd",
    "kvm",
    "disk",
    "systemd-journal",
    "shadow",
    "podman",
    "containerd",
    "microk8s",
    // Keystrokes of every keyboard on the machine (/dev/input).
    "input",
    // Writing to other users' terminals.
    "tty",
    // Debian's `staff` may write /usr/local, first in root's PATH.
    "staff",
];

/// Sockets and devices whose group, when it can write them, has root-equivalent access.
const ROOT_EQUIVALENT: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/podman/podman.sock",
    "/var/snap/lxd/common/lxd/unix.socket",
    "/var/lib/lxd/unix.socket",
    "/var/lib/incus/unix.socket",
    "/run/incus/unix.socket",
    "/var/run/libvirt/libvirt-sock",
    "/run/libvirt/libvirt-sock",
    "/dev/kvm",
    "/dev/mem",
    "/dev/kmem",
    "/dev/port",
    "/dev/sda",
    "/dev/vda",
    "/dev/xvda",
    "/dev/nvme0n1",
];

/// `nogroup` on Debian and Ubuntu (`nobody` elsewhere).
const NOGROUP: u32 = 65534;

/// The group the command runs with, and, when `gid` had to be replaced, a sentence saying
/// why (printed once on stderr).
pub fn sandbox_gid(uid: u32, gid: u32) -> (u32, Option<String>) {
    let Some(why) = privileged(gid) else {
        return (gid, None);
    };
    let replacement = own_group(uid).filter(|g| privileged(*g).is_none());
    let (new, named) = match replacement {
        Some(g) => (g, group_name(g).unwrap_or_else(|| g.to_string())),
        None => (
            NOGROUP,
            group_name(NOGROUP).unwrap_or_else(|| "nogroup".into()),
        ),
    };
    let note = format!(
        "egressd: the command runs with group {named} ({new}), not {} ({gid}): {why}",
        group_name(gid).unwrap_or_else(|| gid.to_string())
    );
    (new, Some(note))
}

/// The groups on this host the sandbox never keeps (by name, or because they can use a
/// root-equivalent socket or device), for `egressd doctor`.
pub fn privileged_here() -> Vec<String> {
    let mut names: Vec<String> = PRIVILEGED_NAMES
        .iter()
        .filter(|n| nix::unistd::Group::from_name(n).ok().flatten().is_some())
        .map(|n| (*n).to_owned())
        .collect();
    for path in ROOT_EQUIVALENT {
        if let Ok(meta) = std::fs::metadata(path)
            && meta.gid() != 0
            && meta.mode() & 0o060 != 0
            && let Some(name) = group_name(meta.gid())
            && !names.contains(&name)
        {
            names.push(name);
        }
    }
    names
}

/// Why `gid` must not reach the sandbox, if it must not.
pub fn privileged(gid: u32) -> Option<String> {
    if gid == 0 {
        return Some("group 0 owns most of the system".into());
    }
    if let Some(name) = group_name(gid)
        && PRIVILEGED_NAMES.contains(&name.as_str())
    {
        return Some(format!(
            "{name} grants root-equivalent access to its members"
        ));
    }
    ROOT_EQUIVALENT.iter().find_map(|path| {
        let meta = std::fs::metadata(Path::new(path)).ok()?;
        (meta.gid() == gid && meta.mode() & 0o060 != 0)
            .then(|| format!("it can use {path}, which grants root"))
    })
}

/// The user's own group: the group named like the user (user private groups), if any.
fn own_group(uid: u32) -> Option<u32> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
    let group = nix::unistd::Group::from_name(&user.name).ok()??;
    Some(group.gid.as_raw())
}

/// The name of group `gid`, when it has one.
pub fn group_name(gid: u32) -> Option<String> {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_named_groups_are_privileged() {
        assert!(privileged(0).is_some());
        // `disk` is gid 6 on Debian and Ubuntu.
        if group_name(6).as_deref() == Some("disk") {
            assert!(privileged(6).is_some());
            let (gid, note) = sandbox_gid(65534, 6);
            assert_ne!(gid, 6);
            assert!(note.unwrap().contains("disk"));
        }
    }

    #[test]
    fn an_ordinary_group_is_kept() {
        if group_name(NOGROUP).is_some() {
            assert_eq!(sandbox_gid(65534, NOGROUP), (NOGROUP, None));
        }
    }
}
