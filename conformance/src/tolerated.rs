//! Positives for what the spec tells readers to tolerate: images that take
//! a liberty a writer may take, in a form our own serializer never writes
//! (so, unlike other positives, their header area is not expected to
//! re-serialize byte for byte). Each is a golden image with bytes patched
//! here, and must be accepted with no finding of any rule.

use qcow2_format::HeaderArea;

use crate::corpus::{Origin, TestImage};
use crate::mutate::put_u32;

/// File offset of the end marker (type 0) of the extension chain.
fn end_marker(bytes: &[u8]) -> Result<usize, String> {
    let a = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let mut at = a.header.header_length as usize;
    loop {
        let kind = u32::from_be_bytes(bytes[at..at + 4].try_into().map_err(|_| "short")?);
        if kind == 0 {
            return Ok(at);
        }
        let len = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().map_err(|_| "short")?);
        at += 8 + (len as usize).next_multiple_of(8);
    }
}

fn tolerated(name: &str, base: &TestImage, bytes: Vec<u8>, what: &str) -> TestImage {
    TestImage {
        name: name.into(),
        origin: Origin::Tolerated,
        bytes,
        made_by: format!(
            "conformance/src/tolerated.rs: golden {} with {what}",
            base.name
        ),
        path: None,
    }
}

/// Every tolerated image, derived from the golden corpus.
pub fn build_all(golden: &[TestImage]) -> Result<Vec<TestImage>, String> {
    let mut out = Vec::new();
    // EXT-FRAMING: the chain ends at the first type-0 entry, whatever its
    // length field says.
    let base = crate::seed_images::plain_base(golden)?;
    let mut b = base.bytes.clone();
    let at = end_marker(&b)?;
    put_u32(&mut b, at + 4, 0xffff_ffff);
    out.push(tolerated(
        "tolerated-end-marker-length",
        base,
        b,
        "the end marker's length field set to 0xffffffff",
    ));
    // HDR-BACKING-FILE: with backing_file_offset 0 the size is ignored.
    let mut b = base.bytes.clone();
    if u64::from_be_bytes(b[8..16].try_into().map_err(|_| "short")?) != 0 {
        return Err(format!("{} has a backing file", base.name));
    }
    put_u32(&mut b, 16, 7);
    out.push(tolerated(
        "tolerated-backing-size-without-offset",
        base,
        b,
        "backing_file_size 7 and backing_file_offset 0",
    ));
    Ok(out)
}
