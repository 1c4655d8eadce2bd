//! `zstd` decompression on hostile input, plus a round trip (see `qcow2_fuzz::check_codec`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qcow2_codec::Zstd;

fuzz_target!(|data: &[u8]| {
    qcow2_fuzz::check_codec(data, 12.min(Zstd::MAX_LEVEL), |level| {
        Box::new(Zstd::new(level).expect("level in range"))
    });
});
