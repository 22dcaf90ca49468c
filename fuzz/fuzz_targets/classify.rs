//! First-bytes classification: TLS ClientHello (SNI, ALPN, ECH) or HTTP/1 request head
//! (`proxy/src/conn/classify.rs`), fed in reads of varying size.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    egressd_proxy::fuzz::classify(data);
});
