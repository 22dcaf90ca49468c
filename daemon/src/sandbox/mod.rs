//! A sandbox: a cgroup v2 directory the kernel programs are attached to, a network
//! namespace holding the proxy's listeners, and the command running inside both.
//!
//! The pieces are RAII owners: dropping them kills what is left in the cgroup, removes it,
//! and closes the namespace.

pub mod bpffs;
pub mod cgroup;
pub mod confine;
pub mod groups;
pub mod init;
pub mod limits;
pub mod netns;
pub mod nft;
pub mod privilege;
pub mod pty;
pub mod runtime_acl;
pub mod seccomp;
pub mod secrets;
pub mod spawn;
pub mod trust;
