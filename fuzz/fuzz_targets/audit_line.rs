//! One line of an audit or access log: egressd's JSONL, AWF's `audit.jsonl`, Squid's
//! `access.log` (`daemon/src/commands/audit/read.rs`, included by path).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.lines() {
            let _ = egressd_fuzz::audit_read::parse(line);
        }
    }
});
