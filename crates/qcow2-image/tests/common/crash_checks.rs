//! Checks run on every disk a crash may leave.
#![allow(dead_code)]

use super::*;

// ---------------------------------------------------------------------------
// Checks on a crashed disk
// ---------------------------------------------------------------------------

/// `qemu-img check --output=json` of `path`: `Ok(leaks)` when there is no
/// corruption and no check error, else a description.
pub fn qemu_check(path: &Path) -> Result<u64, String> {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
        format!(
            "qemu-img check failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let get = |key: &str| json.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
    if get("corruptions") > 0 || get("check-errors") > 0 {
        let compact: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        return Err(format!(
            "qemu-img check: {compact} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(get("leaks"))
}

/// Clusters the dedup table occupies (QEMU sees them as leaks).
pub fn dedup_table_clusters(bytes: &[u8]) -> u64 {
    let storage = MemoryStorage::from_bytes(bytes.to_vec());
    let Ok(area) = qcow2_image::read_header_area(&storage) else {
        return 0;
    };
    let cs = area
        .header
        .geometry()
        .map(|g| g.cluster_size())
        .unwrap_or(512);
    qcow2_dedup::table_ranges(&storage, &area)
        .map(|r| r.iter().map(|(_, len)| len.div_ceil(cs)).sum())
        .unwrap_or(0)
}

/// The dedup table of a crashed image must describe its data exactly
/// (digests match, entries only for live data), so no later hit can return
/// wrong data.
pub fn dedup_check(bytes: &[u8]) -> Result<(), String> {
    let storage = MemoryStorage::from_bytes(bytes.to_vec());
    let area = qcow2_image::read_header_area(&storage).map_err(|e| e.to_string())?;
    if area.dedup().is_none() {
        return Ok(());
    }
    let v = qcow2_dedup::verify(&storage, &area).map_err(|e| format!("dedup verify: {e}"))?;
    let bad: Vec<String> = v
        .findings
        .iter()
        .filter(|f| f.severity == qcow2_dedup::Severity::Corruption)
        .map(|f| format!("{}: {}", f.rule, f.message))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("dedup table: {}", bad.join("; ")))
    }
}

/// Opens the crashed image for writing, writes every payload of the
/// workload again (so dedup hits happen on whatever the crash left) and
/// reads each back: a hit on a wrong entry would return other data.
pub fn rewrite_check(w: &Workload, bytes: Vec<u8>) -> Result<(), String> {
    let image = Image::open(
        Arc::new(MemoryStorage::from_bytes(bytes)),
        OpenOptions {
            writable: true,
            backing: backing_mode(&w.backing),
        },
    )
    .map_err(|e| format!("reopen for writing: {e}"))?;
    for (i, op) in w.ops.iter().enumerate() {
        if let Op::Write { offset, .. } = *op {
            let data = &w.payloads[i];
            if offset + data.len() as u64 > image.size() {
                continue;
            }
            image
                .write_at(data, offset)
                .map_err(|e| format!("rewrite of step {i}: {e}"))?;
            let mut got = vec![0u8; data.len()];
            image
                .read_at(&mut got, offset)
                .map_err(|e| format!("read back of step {i}: {e}"))?;
            if &got != data {
                return Err(format!(
                    "step {i} rewritten after the crash reads back wrong"
                ));
            }
        }
    }
    image
        .close()
        .map_err(|e| format!("close after rewrite: {e}"))
}

/// The engine's own check: no corruption, no check error.
pub fn engine_check(bytes: &[u8]) -> Result<u64, String> {
    let storage = MemoryStorage::from_bytes(bytes.to_vec());
    let hook = qcow2_image::DedupTableReferences;
    match qcow2_alloc::check::check(&storage, &[&hook]) {
        Ok(report) if report.corruptions == 0 && report.check_errors == 0 => Ok(report.leaks),
        Ok(report) => {
            let mut text = format!(
                "engine check: {} corruptions, {} check errors, {} leaks:",
                report.corruptions, report.check_errors, report.leaks
            );
            for f in report.findings.iter().take(8) {
                let _ = write!(text, "\n    {f}");
            }
            Err(text)
        }
        Err(e) => Err(format!("engine check failed: {e}")),
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> Option<(u64, u64)> {
    let start = a.0.max(b.0);
    let end = a.1.min(b.1);
    (start < end).then_some((start, end))
}

/// The parts of `[a, b)` outside every `dirty` range.
fn clean_segments(dirty: &[(u64, u64)], a: u64, b: u64) -> Vec<(u64, u64)> {
    let mut cuts: Vec<(u64, u64)> = dirty.iter().filter_map(|&d| overlaps(d, (a, b))).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = a;
    for (s, e) in cuts {
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < b {
        out.push((at, b));
    }
    out
}

/// Opens the crashed disk read-only with the engine and compares every
/// stable byte the workload may have touched with the model.
pub fn verify_content(w: &Workload, bytes: Vec<u8>, run: &RunResult) -> Result<(), String> {
    let image = Image::open(
        Arc::new(MemoryStorage::from_bytes(bytes)),
        OpenOptions {
            writable: false,
            backing: backing_mode(&w.backing),
        },
    )
    .map_err(|e| format!("engine cannot open the crashed image: {e}"))?;
    let size = image.size();
    if !run.sizes.contains(&size) {
        return Err(format!(
            "virtual size {size} after the crash; expected one of {:?}",
            run.sizes
        ));
    }
    let limit = size.min(run.stable.size);
    for (a, b) in w.interesting() {
        let Some((a, b)) = overlaps((a, b), (0, limit)) else {
            continue;
        };
        let mut pos = a;
        while pos < b {
            let n = (1u64 << 20).min(b - pos);
            let mut got = vec![0u8; n as usize];
            image
                .read_at(&mut got, pos)
                .map_err(|e| format!("engine read of {n} bytes at {pos:#x} failed: {e}"))?;
            let want = run.stable.read(pos, n);
            for (s, e) in clean_segments(&run.dirty, pos, pos + n) {
                let (s, e) = ((s - pos) as usize, (e - pos) as usize);
                if got[s..e] != want[s..e] {
                    let i = (s..e).find(|&i| got[i] != want[i]).unwrap_or(s);
                    return Err(format!(
                        "guest byte {:#x} reads {:#04x}, flushed content is {:#04x}",
                        pos + i as u64,
                        got[i],
                        want[i]
                    ));
                }
            }
            pos += n;
        }
    }
    Ok(())
}
