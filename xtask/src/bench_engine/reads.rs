//! The read part of `bench engine`: random and sequential reads through the engine, pread and qemu-img bench.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Sequential,
    Random,
}

impl Access {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Access::Sequential => "sequential",
            Access::Random => "random",
        }
    }
}

/// splitmix64: a small, fixed-seed generator for the random offsets.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One measurement of our reads: wall time, and what the reader threads'
/// scheduler statistics say about it (summed over the threads).
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) secs: f64,
    /// CPU time the readers ran.
    pub(crate) cpu_ns: u64,
    /// Time the readers were runnable but waited for a CPU (other load).
    pub(crate) wait_ns: u64,
}

/// This thread's run time and run-queue wait time, in ns.
pub(crate) fn schedstat() -> (u64, u64) {
    let text = fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0));
    (fields.next().unwrap_or(0), fields.next().unwrap_or(0))
}

/// Reads `ops` blocks of `bs` bytes through `image` with `threads` threads
/// (each `ops / threads` reads; sequential threads take turns at 1 MiB
/// stripes of one pass, reading each stripe in order; random threads read
/// their own fixed-seed sequence of aligned offsets). Wall time runs from the common start to the last end.
pub(crate) fn engine_reads(
    image: &Image,
    bs: u64,
    ops: u64,
    access: Access,
    threads: u64,
) -> Result<Timing, String> {
    let read = |buf: &mut [u8], offset: u64| {
        image
            .read_at(buf, offset)
            .map_err(|e| format!("read at {offset}: {e}"))
    };
    timed_reads(&read, image.size(), bs, ops, access, threads)
}

/// The same reads as [`engine_reads`] with plain `pread` calls on a file
/// of the same size: the kernel's share of the cost, and its scaling.
pub(crate) fn pread_reads(
    file: &File,
    size: u64,
    bs: u64,
    ops: u64,
    access: Access,
    threads: u64,
) -> Result<Timing, String> {
    let read = |buf: &mut [u8], offset: u64| {
        file.read_exact_at(buf, offset)
            .map_err(|e| format!("pread at {offset}: {e}"))
    };
    timed_reads(&read, size, bs, ops, access, threads)
}

type ReadFn<'a> = dyn Fn(&mut [u8], u64) -> Result<(), String> + Sync + 'a;

pub(crate) fn timed_reads(
    read: &ReadFn<'_>,
    size: u64,
    bs: u64,
    ops: u64,
    access: Access,
    threads: u64,
) -> Result<Timing, String> {
    let blocks = size / bs;
    let per_thread = ops / threads;
    let barrier = Barrier::new(threads as usize + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || -> Result<(u64, u64), String> {
                    let mut buf = vec![0u8; bs as usize];
                    let mut rng = SplitMix(SEED ^ (t + 1).wrapping_mul(0x1234_5678_9abc_def1));
                    let stripe = (STRIPE / bs).max(1);
                    barrier.wait();
                    let (run0, wait0) = schedstat();
                    for i in 0..per_thread {
                        let block = match access {
                            Access::Sequential => {
                                ((i / stripe * threads + t) * stripe + i % stripe) % blocks
                            }
                            Access::Random => rng.next() % blocks,
                        };
                        read(&mut buf, block * bs)?;
                        black_box(&buf);
                    }
                    let (run1, wait1) = schedstat();
                    Ok((run1.saturating_sub(run0), wait1.saturating_sub(wait0)))
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut timing = Timing {
            secs: 0.0,
            cpu_ns: 0,
            wait_ns: 0,
        };
        for worker in workers {
            let (cpu, wait) = worker
                .join()
                .map_err(|_| "a reader thread panicked".to_string())??;
            timing.cpu_ns += cpu;
            timing.wait_ns += wait;
        }
        timing.secs = start.elapsed().as_secs_f64();
        Ok(timing)
    })
}

/// The fastest of `reps` runs of our reads.
pub(crate) fn best_timing(
    reps: usize,
    mut f: impl FnMut() -> Result<Timing, String>,
) -> Result<Timing, String> {
    let mut best: Option<Timing> = None;
    for _ in 0..reps {
        let t = f()?;
        if best.is_none_or(|b| t.secs < b.secs) {
            best = Some(t);
        }
    }
    best.ok_or_else(|| "no runs".to_string())
}

/// Checks that the engine reads what the raw disk holds, at fixed-seed
/// random 64 KiB blocks and a few unaligned ranges.
pub(crate) fn verify_reads(image: &Image, raw: &Path) -> Result<(), String> {
    let file = File::open(raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    let size = image.size();
    let mut rng = SplitMix(SEED);
    let mut ours = vec![0u8; 64 * 1024];
    let mut theirs = vec![0u8; 64 * 1024];
    for i in 0..512 {
        let len = if i % 8 == 7 {
            1 + rng.next() % 65536
        } else {
            65536
        };
        let offset = if i % 8 == 7 {
            rng.next() % (size - len)
        } else {
            rng.next() % (size / 65536) * 65536
        };
        let (a, b) = (&mut ours[..len as usize], &mut theirs[..len as usize]);
        image
            .read_at(a, offset)
            .map_err(|e| format!("read at {offset}: {e}"))?;
        file.read_exact_at(b, offset)
            .map_err(|e| format!("{}: {e}", raw.display()))?;
        if a != b {
            return Err(format!(
                "the engine read different bytes than the raw disk holds at {offset} (+{len})"
            ));
        }
    }
    Ok(())
}

/// `qemu-img bench` reading `ops` blocks of `bs` with `depth` requests in
/// flight, each request `step` bytes after the last (wrapping at the end),
/// through the page cache (`-t writeback`, thread-pool AIO). Returns the
/// time it reports (the I/O loop only, like ours).
pub(crate) fn qemu_reads(
    image: &Path,
    bs: u64,
    ops: u64,
    depth: u32,
    step: u64,
) -> Result<f64, String> {
    let out = output(
        Command::new(QEMU_IMG)
            .args(["bench", "-f", "qcow2", "-t", "writeback", "-i", "threads"])
            .args(["-d", &depth.to_string(), "-c", &ops.to_string()])
            .args(["-s", &bs.to_string(), "-S", &step.to_string()])
            .arg(image),
    )?;
    bench_time(&out)
}

/// The time `qemu-img bench` reports for its I/O loop.
pub(crate) fn bench_time(out: &str) -> Result<f64, String> {
    out.split("Run completed in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|secs| secs.parse::<f64>().ok())
        .ok_or_else(|| format!("cannot read the time in qemu-img bench output: {out}"))
}

/// Best-of-`reps` seconds of one read measurement.
pub(crate) fn best_of(
    reps: usize,
    mut f: impl FnMut() -> Result<f64, String>,
) -> Result<f64, String> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        times.push(f()?);
    }
    Ok(best(&times))
}

pub(crate) struct ReadRow {
    pub(crate) access: Access,
    pub(crate) bs: u64,
    pub(crate) ops: u64,
    pub(crate) ours1: f64,
    pub(crate) ours2: f64,
    /// Our readers' CPU microseconds per read, 1 and 2 threads.
    pub(crate) cpu_per_op: [f64; 2],
    /// The same reads with plain pread on the raw disk: seconds and CPU
    /// microseconds per read, 1 and 2 threads.
    pub(crate) pread: [f64; 2],
    pub(crate) pread_cpu_per_op: [f64; 2],
    /// Share of the readers' time spent waiting for a CPU, 1 and 2 threads.
    pub(crate) wait_share: [f64; 2],
    /// qemu-img bench at depth 1 and 2: sequential, and strided.
    pub(crate) qemu_seq: [f64; 2],
    pub(crate) qemu_stride: [f64; 2],
    /// qemu-img bench sequential at its default depth (64).
    pub(crate) qemu_deep: f64,
}

pub(crate) fn mbs(bs: u64, ops: u64, secs: f64) -> f64 {
    (bs * ops) as f64 / secs / 1e6
}

pub(crate) fn iops(ops: u64, secs: f64) -> f64 {
    ops as f64 / secs
}
