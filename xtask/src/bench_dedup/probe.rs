//! The in-process measurements of `bench dedup`, run in the release xtask.

use super::*;

/// `bench dedup probe scan RAW DISTINCT` / `probe open IMAGE` / `probe
/// overwrite DIR`: the
/// in-process measurements, run in the release xtask; one JSON line out.
pub(super) fn probe(args: &[String]) -> Result<(), String> {
    match (args.first().map(String::as_str), args.len()) {
        (Some("scan"), 3) => probe_scan(Path::new(&args[1]), Path::new(&args[2])),
        (Some("open"), 2) => probe_open(Path::new(&args[1])),
        (Some("overwrite"), 2) => super::overwrite::probe_overwrite(Path::new(&args[1])),
        _ => Err(
            "usage: bench dedup probe scan RAW DISTINCT | probe open IMAGE | probe overwrite DIR"
                .into(),
        ),
    }
}

/// Hashes every non-zero 64 KiB cluster of `raw` on one thread with
/// `hash_cluster` (only the hashing is timed), writes the distinct ones in
/// first-seen order to `distinct`, and builds a `DigestIndex` of them.
fn probe_scan(raw: &Path, distinct: &Path) -> Result<(), String> {
    let mut input = File::open(raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    let mut out = File::create(distinct).map_err(|e| format!("{}: {e}", distinct.display()))?;
    let mut buf = vec![0u8; 64 * CLUSTER as usize];
    let mut seen: HashSet<Digest> = HashSet::new();
    let mut digests: Vec<Digest> = Vec::new();
    let (mut clusters, mut zero, mut hashed) = (0u64, 0u64, 0u64);
    let mut hash_secs = 0.0;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = input
                .read(&mut buf[filled..])
                .map_err(|e| format!("{}: {e}", raw.display()))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let chunks: Vec<&[u8]> = buf[..filled].chunks(CLUSTER as usize).collect();
        let nonzero: Vec<&[u8]> = chunks.iter().copied().filter(|c| !is_zero(c)).collect();
        clusters += chunks.len() as u64;
        zero += (chunks.len() - nonzero.len()) as u64;
        let start = Instant::now();
        let these: Vec<Digest> = nonzero.iter().map(|c| hash_cluster(c)).collect();
        hash_secs += start.elapsed().as_secs_f64();
        for (c, d) in nonzero.iter().zip(these) {
            hashed += c.len() as u64;
            if seen.insert(d) {
                digests.push(d);
                out.write_all(c)
                    .map_err(|e| format!("{}: {e}", distinct.display()))?;
            }
        }
        if filled < buf.len() {
            break;
        }
    }
    out.sync_all()
        .map_err(|e| format!("{}: {e}", distinct.display()))?;
    let index = DigestIndex::build(
        digests
            .iter()
            .enumerate()
            .map(|(i, d)| (*d, ClusterIndex(i as u64 + 1))),
    );
    let json = serde_json::json!({
        "clusters": clusters,
        "zero": zero,
        "distinct": digests.len(),
        "hashed_bytes": hashed,
        "hash_secs": hash_secs,
        "backend": sha256_backend(),
        "index_len": index.len(),
        "index_bytes": index.memory_bytes(),
    });
    println!("{json}");
    Ok(())
}

/// Opens `image` for writing three times; the best open time and the
/// index numbers.
fn probe_open(image: &Path) -> Result<(), String> {
    let mut times = Vec::new();
    let mut stats = None;
    for _ in 0..3 {
        let start = Instant::now();
        let img = Image::open_path(image, true).map_err(|e| format!("{}: {e}", image.display()))?;
        times.push(start.elapsed().as_secs_f64());
        stats = img.dedup_index_stats();
        img.close()
            .map_err(|e| format!("{}: {e}", image.display()))?;
    }
    let (indexed, bytes) = stats.ok_or_else(|| format!("{}: dedup is off", image.display()))?;
    let json = serde_json::json!({
        "open_secs": best(&times),
        "open_times": times,
        "indexed": indexed,
        "index_bytes": bytes,
    });
    println!("{json}");
    Ok(())
}

pub(super) fn run_probe(xtask: &Path, args: &[&Path], kind: &str) -> Result<Value, String> {
    let mut cmd = Command::new(xtask);
    cmd.args(["bench", "dedup", "probe", kind]).args(args);
    let text = output(&mut cmd)?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("probe {kind}: no JSON in {text:?}"))?;
    serde_json::from_str(line).map_err(|e| format!("probe {kind}: {e}"))
}

pub(super) fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

pub(super) fn int(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}
