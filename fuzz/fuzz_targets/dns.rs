//! One packet to the sandbox's DNS listener (`proxy/src/dns.rs`): parse, decide, reply.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    egressd_proxy::fuzz::dns(data);
});
