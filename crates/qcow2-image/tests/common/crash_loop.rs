//! The crash loop: a clean run, then one run per sampled fault.
#![allow(dead_code)]

use super::*;

// ---------------------------------------------------------------------------
// The crash loop
// ---------------------------------------------------------------------------

/// How many events of each class to try.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Occurrences per metadata write kind.
    pub metadata: u64,
    /// Occurrences of data writes.
    pub data: u64,
    /// Flushes.
    pub flushes: u64,
    /// Random subsets of the unflushed writes tried per crash, besides
    /// "all landed" and "none landed".
    pub random_subsets: u64,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            metadata: 12,
            data: 4,
            flushes: 16,
            random_subsets: 2,
        }
    }
}

/// Up to `cap` ordinals from 1..=count, spread evenly, first and last
/// included.
pub fn sample(count: u64, cap: u64) -> Vec<u64> {
    if count <= cap {
        return (1..=count).collect();
    }
    let mut out: Vec<u64> = (0..cap)
        .map(|i| 1 + i * (count - 1) / (cap - 1).max(1))
        .collect();
    out.dedup();
    out
}

/// Counts of one workload's clean run.
#[derive(Debug, Default)]
pub struct Summary {
    pub writes: Vec<(WriteKind, u64)>,
    pub flushes: u64,
    pub faults: u64,
    pub disks: u64,
    pub failures: Vec<String>,
    /// Time spent re-running the workload, in `qemu-img check`, in the
    /// engine's check and reading back content.
    pub times: [Duration; 4],
    /// The image the clean run left.
    pub clean_image: Vec<u8>,
}

/// Runs `w` cleanly, then once per sampled event and effect with that
/// event broken, checking every disk the crash may leave. Returns what was
/// tried and every failure found (never panics on an engine failure).
pub fn crash_workload(w: &Workload, caps: Caps, dir: &Path) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();

    // 1. The clean run: counts events and must leave a clean image.
    let clean = Arc::new(FaultStorage::new(VolatileStorage::new(w.start.clone())));
    let run = run_workload(w, clean.clone(), &|| false);
    if let Some(e) = &run.error {
        summary
            .failures
            .push(format!("{}: clean run failed: {e}", w.name));
        return summary;
    }
    for kind in WriteKind::ALL {
        summary.writes.push((kind, clean.writes_of(kind)));
    }
    summary.flushes = clean.flushes();
    let path = dir.join(format!("{}.qcow2", w.name));
    let bytes = clean.inner().crash_image(Survivors::All);
    std::fs::write(&path, &bytes).expect("write image");
    summary.clean_image = bytes.clone();
    match qemu_check(&path) {
        Ok(leaks) if leaks == dedup_table_clusters(&bytes) => {}
        Ok(leaks) => summary
            .failures
            .push(format!("{}: clean run leaks {leaks} clusters", w.name)),
        Err(e) => summary.failures.push(format!("{}: clean run: {e}", w.name)),
    }
    if let Err(e) = verify_content(w, bytes, &run) {
        summary.failures.push(format!("{}: clean run: {e}", w.name));
    }

    // 2. The faults.
    let mut faults = Vec::new();
    for (kind, count) in summary.writes.clone() {
        let cap = if kind.is_metadata() {
            caps.metadata
        } else {
            caps.data
        };
        for n in sample(count, cap) {
            for effect in [Effect::Fail, Effect::Tear] {
                faults.push(Fault::new(Trigger::WriteOf(kind, n), effect));
            }
        }
    }
    for n in sample(summary.flushes, caps.flushes) {
        faults.push(Fault::fail_flush(n));
    }

    for fault in faults {
        summary.faults += 1;
        let storage = Arc::new(FaultStorage::with_fault(
            VolatileStorage::new(w.start.clone()),
            fault,
        ));
        let label = format!("{}: {fault}", w.name);
        let t = Instant::now();
        let caught = catch_unwind(AssertUnwindSafe(|| {
            run_workload(w, storage.clone(), &|| storage.fired())
        }));
        summary.times[0] += t.elapsed();
        let run = match caught {
            Ok(run) => run,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                summary
                    .failures
                    .push(format!("{label}: the engine panicked: {msg}"));
                continue;
            }
        };
        if !storage.fired() {
            summary
                .failures
                .push(format!("{label}: the fault never fired"));
            continue;
        }
        match &run.error {
            None if run.succeeded_dead => summary.failures.push(format!(
                "{label}: a step succeeded although the storage had died"
            )),
            None => {}
            Some(e) if !e.contains("injected storage fault") && !e.contains("dead after") => {
                summary
                    .failures
                    .push(format!("{label}: unexpected error {e}"));
            }
            Some(_) => {}
        }
        let mut variants = vec![Survivors::All];
        if storage.inner().pending() > 0 {
            variants.push(Survivors::None);
            for i in 0..caps.random_subsets {
                variants.push(Survivors::Random(summary.faults * 7919 + i + 1));
            }
        }
        for survivors in variants {
            summary.disks += 1;
            let bytes = storage.inner().crash_image(survivors);
            let label = format!(
                "{label}, unflushed writes surviving: {survivors:?} [{} ]",
                storage.inner().describe_pending(survivors)
            );
            std::fs::write(&path, &bytes).expect("write image");
            let t = Instant::now();
            let qemu = qemu_check(&path);
            summary.times[1] += t.elapsed();
            if let Err(e) = qemu {
                summary.failures.push(format!("{label}: {e}"));
                continue;
            }
            let t = Instant::now();
            let engine = engine_check(&bytes);
            summary.times[2] += t.elapsed();
            if let Err(e) = engine {
                summary.failures.push(format!("{label}: {e}"));
            }
            if let Err(e) = dedup_check(&bytes) {
                summary.failures.push(format!("{label}: {e}"));
            }
            if dedup_table_clusters(&bytes) > 0 {
                if let Err(e) = rewrite_check(w, bytes.clone()) {
                    summary.failures.push(format!("{label}: {e}"));
                }
            }
            let t = Instant::now();
            let content = verify_content(w, bytes, &run);
            summary.times[3] += t.elapsed();
            if let Err(e) = content {
                summary.failures.push(format!("{label}: {e}"));
            }
        }
    }
    eprintln!(
        "crash {}: writes {:?}, flushes {}, {} faults, {} disks checked, {} failures, {:.1?} (run {:.1?}, qemu-img {:.1?}, check {:.1?}, read {:.1?})",
        w.name,
        summary
            .writes
            .iter()
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>(),
        summary.flushes,
        summary.faults,
        summary.disks,
        summary.failures.len(),
        started.elapsed(),
        summary.times[0],
        summary.times[1],
        summary.times[2],
        summary.times[3],
    );
    summary
}

/// Panics listing the failures of `summary`, if any.
pub fn assert_no_failures(summary: &Summary) {
    if summary.failures.is_empty() {
        return;
    }
    let mut text = format!("{} crash failures:\n", summary.failures.len());
    for f in summary.failures.iter().take(40) {
        let _ = writeln!(text, "  {f}");
    }
    panic!("{text}");
}
