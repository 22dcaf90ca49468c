//! What the process holds right now, for `kill -USR1` on `egressd exec`: memory in use by the
//! allocator and resident, so an operator (or a load test) can tell a leak from the
//! allocator's caches and lazily touched buffers, which RSS alone cannot.

/// Bytes the allocator has handed out and not had back (glibc `mallinfo2`: `uordblks` plus
/// `hblkhd`, the mmapped blocks); `None` where that call does not exist (musl).
pub fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value.
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks as u64).saturating_add(info.hblkhd as u64))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Resident memory of this process in KiB (`VmRSS` of `/proc/self/status`).
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// The stats line: `egressd: stats: open_connections=N heap_in_use_kib=H rss_kib=R
/// allowed=A denied=D` (fields that cannot be read are left out).
pub fn line(open_connections: usize, summary: &egressd_proxy::Summary) -> String {
    let mut line = format!("egressd: stats: open_connections={open_connections}");
    if let Some(heap) = heap_in_use() {
        line.push_str(&format!(" heap_in_use_kib={}", heap / 1024));
    }
    if let Some(rss) = rss_kib() {
        line.push_str(&format!(" rss_kib={rss}"));
    }
    line.push_str(&format!(
        " allowed={} denied={}",
        summary.allowed, summary.denied
    ));
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn heap_in_use_follows_allocations() {
        let Some(before) = super::heap_in_use() else {
            return; // not glibc
        };
        let block = vec![1u8; 64 << 20];
        let during = super::heap_in_use().unwrap();
        assert!(during >= before + (60 << 20), "{before} -> {during}");
        drop(block);
        let after = super::heap_in_use().unwrap();
        assert!(after < during - (60 << 20), "{during} -> {after}");
        assert!(super::rss_kib().unwrap() > 0);
    }
}
