//! `brotli` decompression on hostile input, plus a round trip (see `qcow2_fuzz::check_codec`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qcow2_codec::Brotli;

fuzz_target!(|data: &[u8]| {
    qcow2_fuzz::check_codec(data, 8.min(Brotli::MAX_LEVEL), |level| {
        Box::new(Brotli::new(level).expect("level in range"))
    });
});
