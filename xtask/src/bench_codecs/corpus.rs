//! The benchmark data set: real files from /usr/lib and /usr/share, cut into
//! clusters, all-zero clusters dropped (qcow2 stores those as zero clusters,
//! never compressed).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// No single file may dominate the sample.
const PER_FILE_CAP: u64 = 1 << 20;

/// Regular files under `root` (symlinks not followed), sorted, with sizes.
fn walk(root: &Path, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, out);
        } else if meta.is_file() && meta.len() > 0 {
            out.push((path, meta.len().min(PER_FILE_CAP)));
        }
    }
}

/// Concatenates about `target` bytes of files picked evenly across `roots`
/// (so the sample spans the whole tree, not its first directories).
pub(crate) fn build(roots: &[&str], target: usize) -> Result<Vec<u8>, String> {
    let mut files = Vec::new();
    for root in roots {
        walk(Path::new(root), &mut files);
    }
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    if total == 0 {
        return Err(format!("no files under {roots:?}"));
    }
    let target_u64 = target as u64;
    let mut data = Vec::with_capacity(target + PER_FILE_CAP as usize);
    let (mut seen, mut next_pick) = (0u64, 0u64);
    for (path, len) in &files {
        if seen >= next_pick && data.len() < target {
            let before = data.len();
            // Unreadable files (permissions, races) are skipped.
            if let Ok(file) = fs::File::open(path) {
                let _ = file.take(*len).read_to_end(&mut data);
            }
            let taken = (data.len() - before) as u64;
            // Skip ahead in proportion to the sampling rate.
            next_pick = seen + taken.max(1) * total.div_ceil(target_u64).max(1);
        }
        seen += len;
    }
    data.truncate(target);
    Ok(data)
}

/// Splits `data` into `cluster`-byte clusters, dropping all-zero ones and a
/// partial tail, in an interleaved order (0, 16, 32, ..., 1, 17, ...) so that
/// the prefix a slow row has time for is still spread over the whole sample.
pub(crate) fn clusters(data: &[u8], cluster: usize) -> Vec<&[u8]> {
    const STRIDE: usize = 16;
    let all: Vec<&[u8]> = data
        .chunks_exact(cluster)
        .filter(|c| c.iter().any(|&b| b != 0))
        .collect();
    (0..STRIDE)
        .flat_map(|offset| all.iter().skip(offset).step_by(STRIDE).copied())
        .collect()
}
