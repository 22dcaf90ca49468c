//! One plain-HTTP client connection through hyper and `proxy/src/conn/http.rs`, with nothing
//! allowed: every response must be a 4xx and no name may be resolved.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    egressd_proxy::fuzz::http_head(data);
});
