//! AWF's `--config` JSON (`daemon/src/commands/awf/config.rs`, included by path).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = egressd_fuzz::awf_config::parse(text);
    }
});
