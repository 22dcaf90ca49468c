//! Least privilege after set-up: once the sandbox runs, `exec` needs almost none of the
//! capabilities it started with. Every thread of egressd keeps only what the rest of the run
//! uses (`CAP_KILL` to signal the sandbox; the nftables backend also reads its counter), so a
//! bug in the proxy cannot be turned into loading BPF programs, mounting or entering
//! namespaces.
//!
//! Capabilities belong to threads, not processes: each tokio worker drops its own, while the
//! main thread holds them all at a barrier (so no worker runs two of these tasks), and
//! threads created afterwards inherit the reduced sets.

use std::sync::{Arc, Barrier};

use anyhow::Context as _;
use caps::{CapSet, Capability, CapsHashSet};

/// Keeps only `keep` in the calling thread's effective and permitted sets, clears its
/// inheritable set and drops everything else from its bounding set.
pub fn drop_to(keep: &[Capability]) -> anyhow::Result<()> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    for cap in caps::all() {
        if !keep.contains(&cap) {
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .context("clearing the inheritable capabilities")?;
    caps::set(None, CapSet::Effective, &keep).context("reducing the effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("reducing the permitted capabilities")?;
    Ok(())
}

/// Drops to `keep` in each of the `workers` threads of `runtime` and in the calling thread.
pub fn drop_everywhere(
    runtime: &tokio::runtime::Runtime,
    workers: usize,
    keep: &[Capability],
) -> anyhow::Result<()> {
    let barrier = Arc::new(Barrier::new(workers + 1));
    // Spawned from outside the runtime: the tasks go to the shared queue, and each blocks
    // its worker at the barrier until every worker holds one.
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let keep = keep.to_vec();
            runtime.spawn(async move {
                barrier.wait();
                drop_to(&keep)
            })
        })
        .collect();
    barrier.wait();
    drop_to(keep)?;
    for task in tasks {
        runtime
            .block_on(task)
            .context("a worker thread ended while dropping capabilities")??;
    }
    Ok(())
}
