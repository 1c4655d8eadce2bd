//! The reference: the system zlib at QEMU's settings, driven through
//! python3's `zlib` module (a thin binding over the system libz), so xtask
//! needs no unsafe FFI. Per-call overhead is a few microseconds against
//! about a millisecond of work per 64 KiB cluster.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::Measurement;

/// Times compress then decompress of every cluster in the file, best of
/// `reps`, and prints: zlib runtime version, compress seconds, decompress
/// seconds, stored bytes, compressed clusters.
const SCRIPT: &str = r#"
import sys, time, zlib
path, size, level, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = open(path, "rb").read()
clusters = [data[i:i + size] for i in range(0, len(data) - size + 1, size)]
best_c = best_d = float("inf")
for _ in range(reps):
    out = []
    t = time.perf_counter()
    for c in clusters:
        # As QEMU: a fresh raw-deflate stream, window bits 12, memLevel 9.
        z = zlib.compressobj(level, zlib.DEFLATED, -12, 9)
        out.append(z.compress(c) + z.flush())
    best_c = min(best_c, time.perf_counter() - t)
packed = [o for o in out if len(o) < size]
for _ in range(reps):
    t = time.perf_counter()
    for o in packed:
        zlib.decompress(o, -12, size)
    best_d = min(best_d, time.perf_counter() - t)
for o, c in zip(out, clusters):
    assert len(o) >= size or zlib.decompress(o, -12) == c
stored = sum(min(len(o), size) for o in out)
print(zlib.ZLIB_RUNTIME_VERSION, best_c, best_d, stored, len(packed))
"#;

/// Runs the reference on `clusters` (written to `scratch`).
pub(crate) fn measure(
    clusters: &[&[u8]],
    scratch: &Path,
    level: u32,
    reps: usize,
) -> Result<(String, Measurement), String> {
    let size = clusters.first().map_or(0, |c| c.len());
    let mut file = std::fs::File::create(scratch).map_err(|e| format!("{scratch:?}: {e}"))?;
    for c in clusters {
        file.write_all(c).map_err(|e| format!("{scratch:?}: {e}"))?;
    }
    drop(file);
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(scratch)
        .args([size.to_string(), level.to_string(), reps.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run python3 for the system zlib reference: {e}"))?;
    if !out.status.success() {
        return Err("python3 zlib reference failed".to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [version, c, d, stored, packed] = fields[..] else {
        return Err(format!("unexpected python3 output: {text:?}"));
    };
    let num = |s: &str| s.parse::<f64>().map_err(|e| format!("{s:?}: {e}"));
    Ok((
        version.to_string(),
        Measurement {
            clusters: clusters.len(),
            input_bytes: (clusters.len() * size) as u64,
            stored_bytes: num(stored)? as u64,
            compressed_input_bytes: (num(packed)? as usize * size) as u64,
            compress_secs: num(c)?,
            decompress_secs: num(d)?,
        },
    ))
}
