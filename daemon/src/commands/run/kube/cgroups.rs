//! Where a pod is on this node: its pod cgroup (the kubelet's layout, systemd or cgroupfs
//! driver) and its network namespace (that of a process in the pod's cgroup subtree, the
//! runtime's sandbox "pause" process first of all).

use std::fs;
use std::path::{Path, PathBuf};

/// How deep below the root a pod cgroup may be (`kubepods.slice/kubepods-burstable.slice/
/// kubepods-burstable-pod<uid>.slice` is 3).
const POD_DEPTH: usize = 4;
/// How deep below the pod cgroup a process is looked for (the containers' cgroups are 1).
const PROCESS_DEPTH: usize = 3;
/// The most processes of a pod looked at.
const MAX_PROCESSES: usize = 256;

/// The pod cgroup of the pod with `uid` below `root`: a directory named `pod<uid>` (the
/// cgroupfs driver) or `...-pod<uid with '_' for '-'>.slice` (the systemd driver).
pub fn pod_cgroup(root: &Path, uid: &str) -> Option<PathBuf> {
    let cgroupfs = format!("pod{uid}");
    let systemd = format!("-pod{}.slice", uid.replace('-', "_"));
    find_dir(root, POD_DEPTH, &|name| {
        name == cgroupfs || name.ends_with(&systemd)
    })
}

fn find_dir(dir: &Path, depth: usize, wanted: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    if depth == 0 {
        return None;
    }
    let entries = fs::read_dir(dir).ok()?;
    let mut below = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if wanted(&name) {
            return Some(entry.path());
        }
        below.push(entry.path());
    }
    below.iter().find_map(|d| find_dir(d, depth - 1, wanted))
}

/// The processes in `cgroup` and below it (breadth first: the pod's own, then its
/// containers'), at most [`MAX_PROCESSES`].
pub fn pod_processes(cgroup: &Path) -> Vec<i32> {
    let mut found = Vec::new();
    let mut level = vec![cgroup.to_path_buf()];
    for _ in 0..=PROCESS_DEPTH {
        let mut next = Vec::new();
        for dir in &level {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                found.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                if found.len() >= MAX_PROCESSES {
                    found.truncate(MAX_PROCESSES);
                    return found;
                }
            }
            if let Ok(entries) = fs::read_dir(dir) {
                next.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        next.sort();
        level = next;
    }
    found
}

/// Whether process `pid` is in this process's network namespace (`None`: it is gone).
pub fn in_our_netns(pid: i32) -> Option<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let theirs = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    let ours = fs::metadata("/proc/self/ns/net").ok()?;
    Some(theirs.ino() == ours.ino() && theirs.dev() == ours.dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(paths: &[&str]) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "egressd-kube-cgroups-{}-{}",
            std::process::id(),
            paths.len()
        ));
        let _ = fs::remove_dir_all(&root);
        for p in paths {
            fs::create_dir_all(root.join(p)).unwrap();
        }
        root
    }

    #[test]
    fn both_drivers_layouts_are_found() {
        let uid = "0b6f2c1e-4d7a-4c2b-9f3e-2a1b3c4d5e6f";
        let root = tree(&[
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod11111111_2222.slice",
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b6f2c1e_4d7a_4c2b_9f3e_2a1b3c4d5e6f.slice/cri-containerd-abc.scope",
        ]);
        assert_eq!(
            pod_cgroup(&root, uid),
            Some(root.join(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b6f2c1e_4d7a_4c2b_9f3e_2a1b3c4d5e6f.slice"
            ))
        );
        assert_eq!(pod_cgroup(&root, "ffffffff-0000"), None);
        fs::remove_dir_all(&root).unwrap();

        let root = tree(&[&format!("kubepods/pod{uid}/c1"), "kubepods/burstable"]);
        assert_eq!(
            pod_cgroup(&root, uid),
            Some(root.join(format!("kubepods/pod{uid}")))
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_process_is_found_in_the_pod_or_its_containers() {
        let root = tree(&["pod/a.scope", "pod/b.scope"]);
        fs::write(root.join("pod/cgroup.procs"), "").unwrap();
        fs::write(root.join("pod/a.scope/cgroup.procs"), "").unwrap();
        assert!(pod_processes(&root.join("pod")).is_empty());
        fs::write(root.join("pod/b.scope/cgroup.procs"), "4242\n4243\n").unwrap();
        fs::write(root.join("pod/cgroup.procs"), "17\n").unwrap();
        assert_eq!(pod_processes(&root.join("pod")), vec![17, 4242, 4243]);
        fs::remove_dir_all(&root).unwrap();
    }
}
