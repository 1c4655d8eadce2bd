//! The Markdown report of `bench engine`, and helpers the other benchmarks share.

use super::*;

pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    pub(crate) qemu: String,
    pub(crate) rustc: String,
    pub(crate) date: String,
}

pub(crate) fn machine() -> Machine {
    let first_line = |cmd: &mut Command| {
        output(cmd)
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_else(|| "unknown".into())
    };
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model,
        kernel: first_line(Command::new("uname").arg("-r")),
        qemu: first_line(Command::new(QEMU_IMG).arg("--version")),
        rustc: first_line(Command::new("rustc").arg("--version")),
        date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d"])),
    }
}

pub(crate) fn fmt_rate(bs: u64, ops: u64, secs: f64) -> String {
    format!(
        "{:.0} MB/s, {:.0} IOPS",
        mbs(bs, ops, secs),
        iops(ops, secs)
    )
}

pub(crate) fn kib(bs: u64) -> String {
    format!("{} KiB", bs / 1024)
}

pub(crate) struct Report<'a> {
    pub(crate) opts: &'a Options,
    pub(crate) machine: Machine,
    pub(crate) raw_size: u64,
    pub(crate) cold: bool,
    pub(crate) convert: Vec<ConvertRow>,
    pub(crate) reads: Vec<ReadRow>,
    /// Share of the read image's guest bytes that are unallocated.
    pub(crate) unallocated_share: f64,
}

impl Report<'_> {
    pub(crate) fn convert_table(&self) -> String {
        let mut s = String::from(
            "| tool | best s | median s | MB/s (best) | output bytes | allocated bytes | peak RSS | ours vs tool (speed) |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        let ours = self
            .convert
            .iter()
            .find(|r| r.label == "qcow2 convert")
            .map_or(f64::NAN, |r| best(&r.times));
        for r in &self.convert {
            s += &format!(
                "| {} | {:.2} | {:.2} | {:.0} | {} | {} | {} | {:.2} |\n",
                r.label,
                best(&r.times),
                median(&r.times),
                self.raw_size as f64 / best(&r.times) / 1e6,
                r.size,
                r.allocated,
                crate::bench_compression::report::rss_mib(r.rss_kib),
                best(&r.times) / ours
            );
        }
        s
    }

    pub(crate) fn read_table(&self) -> String {
        let mut s = String::from(
            "| access | block | ops | ours, 1 thread | ours, 2 threads | 2T/1T | \
             qemu-img bench -d 1 (sequential) | qemu-img bench -d 2 (sequential) | \
             ours 1T / qemu -d 1 | ours 2T / qemu -d 2 |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.reads {
            s += &format!(
                "| {} | {} | {} | {} | {} | {:.2}x | {} | {} | {:.2} | {:.2} |\n",
                r.access.name(),
                kib(r.bs),
                r.ops,
                fmt_rate(r.bs, r.ops, r.ours1),
                fmt_rate(r.bs, r.ops, r.ours2),
                r.ours1 / r.ours2,
                fmt_rate(r.bs, r.ops, r.qemu_seq[0]),
                fmt_rate(r.bs, r.ops, r.qemu_seq[1]),
                r.qemu_seq[0] / r.ours1,
                r.qemu_seq[1] / r.ours2,
            );
        }
        s
    }

    pub(crate) fn scaling_table(&self) -> String {
        let mut s = String::from(
            "| access | block | ours 2T/1T | ours CPU us per read, 1T / 2T | \
             ours waiting for a CPU, 1T / 2T | pread 2T/1T | pread CPU us per read, 1T / 2T | \
             pread, 1 thread |\n|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.reads {
            s += &format!(
                "| {} | {} | {:.2}x | {:.2} / {:.2} | {:.0}% / {:.0}% | {:.2}x | {:.2} / {:.2} | {} |\n",
                r.access.name(),
                kib(r.bs),
                r.ours1 / r.ours2,
                r.cpu_per_op[0],
                r.cpu_per_op[1],
                r.wait_share[0] * 100.0,
                r.wait_share[1] * 100.0,
                r.pread[0] / r.pread[1],
                r.pread_cpu_per_op[0],
                r.pread_cpu_per_op[1],
                fmt_rate(r.bs, r.ops, r.pread[0]),
            );
        }
        s
    }

    pub(crate) fn other_qemu_table(&self) -> String {
        let mut s = String::from(
            "| block | qemu-img bench strided, -d 1 | strided, -d 2 | sequential, -d 64 |\n\
             |---|---|---|---|\n",
        );
        for r in self.reads.iter().filter(|r| r.access == Access::Sequential) {
            s += &format!(
                "| {} | {} | {} | {} |\n",
                kib(r.bs),
                fmt_rate(r.bs, r.ops, r.qemu_stride[0]),
                fmt_rate(r.bs, r.ops, r.qemu_stride[1]),
                fmt_rate(r.bs, r.ops, r.qemu_deep),
            );
        }
        s
    }

    pub(crate) fn goals(&self) -> String {
        let mut s = String::new();
        let time = |label: &str| {
            self.convert
                .iter()
                .find(|r| r.label == label)
                .map_or(f64::NAN, |r| best(&r.times))
        };
        let ratio = time("qemu-img convert") / time("qcow2 convert");
        s += &format!(
            "- convert raw -> qcow2: qcow2 convert is {ratio:.3}x as fast as qemu-img convert \
             (goal >= 1.10x): {}\n",
            verdict(ratio >= 1.1)
        );
        let rss = self
            .convert
            .iter()
            .find(|r| r.label == "qcow2 convert")
            .and_then(|r| r.rss_kib);
        s += &format!(
            "- peak RSS of qcow2 convert raw -> qcow2: {} (goal <= 64 MiB): {}\n",
            crate::bench_compression::report::rss_mib(rss),
            verdict(rss.is_some_and(|k| k <= 64 * 1024))
        );
        for r in &self.reads {
            let scaling = r.ours1 / r.ours2;
            let busy = if r.wait_share[1] > 0.1 {
                format!(
                    " (the 2 readers spent {:.0}% of their time waiting for a CPU)",
                    r.wait_share[1] * 100.0
                )
            } else {
                String::new()
            };
            s += &format!(
                "- {} {} reads, 2 threads vs 1: {scaling:.2}x (goal >= 1.70x): {}{busy}; \
                 plain pread: {:.2}x\n",
                r.access.name(),
                kib(r.bs),
                verdict(scaling >= 1.7),
                r.pread[0] / r.pread[1]
            );
        }
        s
    }

    pub(crate) fn section(&self) -> String {
        let m = &self.machine;
        let size_mib = self.raw_size >> 20;
        let cache_note = if self.cold {
            "the page cache is dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before \
             every run, so each tool reads the source from disk"
        } else {
            "the page cache could not be dropped (not root?), so the source is read once \
             before every run and each tool reads it from the page cache"
        };
        format!(
            "## Engine\n\n\
             The `qcow2-image` engine and `qcow2 convert` next to `qemu-img` on the same disk, \
             all measured in one run of\n\n\
             ```sh\n\
             cargo run --release -p xtask -- bench engine\n\
             ```\n\n\
             (`--size-mib N` for a smaller disk, `--reps N`, `--ops N`; the corpus is built once \
             and cached in `target/bench-corpus/`.)\n\n\
             - **Machine:** {cpus} CPUs ({cpu}), Linux {kernel}, {rustc}, release build; \
             other agents' builds shared the machine, so the figures are best of {reps}. \
             Full runs on this shared VM differ: convert times by up to 15% and 2-thread \
             scaling by up to 0.5x between runs the same day, so a small difference or a \
             single miss is noise until a rerun on an idle machine confirms it.\n\
             - **Reference:** {qemu}.\n\
             - **Date:** {date}.\n\
             - **Corpus:** a {size_mib} MiB raw disk holding an ext4 filesystem \
             (`mkfs.ext4 -d`, 4 KiB blocks) filled with about {fill} MiB of regular files \
             sampled from /usr (bin, sbin, lib, libexec, share, include) in a fixed \
             pseudo-random order; the rest is free space (zeros). Every byte is written, \
             so no tool can skip holes.\n\
             - **Convert:** `qemu-img convert -f raw -O qcow2 fs.raw out.qcow2` (the \
             reference; `-W`, out-of-order writes, also shown) and `qcow2 convert -f raw -O \
             qcow2 fs.raw out.qcow2`, default options (64 KiB clusters, all-zero clusters left \
             unallocated), {reps} runs each, tools interleaved; {cache_note}. Time is wall time \
             of the process plus an fsync of the output after it exits: `qcow2 convert` \
             fdatasyncs before it exits, while `qemu-img convert` opens its output with cache \
             mode `unsafe` (its default `-t`) and never flushes, so without that fsync its time \
             would leave out writing the output back to disk, which ours waits for. Our output passed \
             `qemu-img check` and `qemu-img compare` against the source (the benchmark fails \
             otherwise). Peak RSS: `/usr/bin/time -f %M` (the kernel's ru_maxrss of the \
             tool), largest over the runs.\n\
             - **Reads:** of the image `qemu-img convert` wrote, with the file already in the \
             page cache, so these measure the engines' per-request cost, not the disk. Ours: \
             `Image::read_at` in-process on `FileStorage` (pread through the page cache), 1 \
             thread, and 2 threads on one shared `Image` (sequential: the threads take turns at \
             1 MiB stripes of one pass, each stripe read in order, so both meet the same mix \
             of data and free space; random: each thread its own fixed-seed sequence of \
             block-aligned offsets, same total ops). qemu-img: `qemu-img bench -f qcow2 -t \
             writeback -i threads -d D -c OPS -s BS`, i.e. also through the page cache, with \
             D = 1 and 2 requests in flight, against our 1 and 2 threads. `qemu-img bench` \
             has no random mode, so random rows are compared with its sequential figures; its \
             strided figures (`-S` of {stride} blocks, which visit every block once per pass \
             in a scattered order) are listed below as a closer random-like reference. Times \
             cover the I/O loop only (qemu-img bench reports the same), best of {reps}. MB/s = \
             10^6 bytes per second; ratios > 1 mean ours is faster.\n\n\
             ### Convert raw -> qcow2\n\n{convert}\n\
             ### Reads\n\n{reads}\n\
             Scaling from 1 to 2 threads, with what the kernel's scheduler statistics \
             (`/proc/thread-self/schedstat`, summed over the reader threads) say about the \
             same best runs: CPU time per read, and the share of the readers' time spent \
             runnable but waiting for a CPU (taken by other processes). CPU per read that stays \
             flat from 1 to 2 threads means the readers do not get in each other's way; time \
             waiting for a CPU is lost to other load on the machine, not to the engine. The \
             *pread* columns make the same reads (same offsets, threads and op counts) with \
             plain `pread` on the raw disk file, also cached: the kernel's own cost and \
             scaling, a ceiling for any engine that reads through one file descriptor (the \
             raw disk has no unallocated ranges, so every pread copies data, while ours \
             fill the image's unallocated clusters, {unallocated:.0}% of the disk, with zeros \
             without a system call).\n\n\
             {scaling}\n\
             Other `qemu-img bench` figures, same op counts: strided (`-S` = {stride} blocks) \
             at depth 1 and 2, and sequential at its default depth of 64 requests in flight \
             (its thread pool then reads with many threads at once):\n\n{other_qemu}\n\
             ### Goals\n\n{goals}",
            cpus = m.cpus,
            cpu = m.cpu_model,
            kernel = m.kernel,
            rustc = m.rustc,
            reps = self.opts.reps,
            qemu = m.qemu,
            date = m.date,
            fill = (size_mib as f64 * 0.6).round(),
            stride = STRIDE_BLOCKS,
            convert = self.convert_table(),
            reads = self.read_table(),
            scaling = self.scaling_table(),
            other_qemu = self.other_qemu_table(),
            unallocated = self.unallocated_share * 100.0,
            goals = self.goals(),
        )
    }
}

/// Wraps the prose lines of a markdown text at 78 columns (bullet items
/// continue indented by two spaces); tables, code and headings stay as
/// they are.
pub(crate) fn wrap_markdown(text: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || line.starts_with("```") || line.starts_with('|') || line.starts_with('#') {
            out += line;
            out.push('\n');
            continue;
        }
        let indent = if line.starts_with("- ") { "  " } else { "" };
        let mut current = String::new();
        for word in line.split(' ') {
            if !current.is_empty() && current.len() + 1 + word.len() > 78 {
                out += &current;
                out.push('\n');
                current = indent.to_string();
            } else if !current.is_empty() {
                current.push(' ');
            }
            current += word;
        }
        out += &current;
        out.push('\n');
    }
    out
}

pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// Replaces (or appends) the section `section` heads in `docs/benchmarks.md`.
pub(crate) fn write_doc(root: &Path, section: &str) -> Result<(), String> {
    let path = root.join("docs").join("benchmarks.md");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let heading = section.lines().next().unwrap_or_default();
    fs::write(
        &path,
        crate::bench_compression::splice_section(&text, heading, section),
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}
