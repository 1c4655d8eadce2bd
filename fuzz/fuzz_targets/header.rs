//! Header, extension chain and assessment from arbitrary bytes: no panic, no hang,
//! no unbounded allocation; whatever parses must re-serialize and parse to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qcow2_format::HeaderArea;

fuzz_target!(|data: &[u8]| {
    let Ok(area) = HeaderArea::parse(data) else {
        return;
    };
    let _ = area.assess(Some(&|name: &str| (name == "zlib").then_some(9)));
    let mut copy = area.clone();
    if let Ok(bytes) = copy.to_bytes() {
        let again = HeaderArea::parse(&bytes).expect("re-serialized header area must parse");
        assert_eq!(again.header, copy.header);
        assert_eq!(again.chain.extensions, copy.chain.extensions);
    }
});
