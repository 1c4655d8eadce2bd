//! The Markdown report of `bench dedup`: tables and goal lines.

use super::*;

pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

pub(super) fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

impl Measured {
    fn nonzero(&self) -> u64 {
        int(&self.scan, "clusters") - int(&self.scan, "zero")
    }
    fn distinct(&self) -> u64 {
        int(&self.scan, "distinct")
    }
    fn ideal(&self) -> u64 {
        self.distinct() * CLUSTER
    }
    /// Header, L1, L2 and refcount bytes of our plain output.
    fn plain_metadata(&self) -> u64 {
        self.plain[1]
            .bytes()
            .saturating_sub(self.nonzero() * CLUSTER)
    }
    fn size_limit(&self) -> f64 {
        SIZE_GOAL * self.ideal() as f64 + (self.plain_metadata() + self.dedup_table) as f64
    }
    fn c_ideal(&self) -> u64 {
        self.compressed[2].bytes() + self.c_table
    }
    fn rss_limit_kib(&self) -> f64 {
        RSS_BASE_MIB * 1024.0 + int(&self.dedup_index, "index_bytes") as f64 / 1024.0
    }
    fn index_per_cluster(&self) -> (f64, f64) {
        let built = int(&self.scan, "index_bytes") as f64 / int(&self.scan, "index_len") as f64;
        let opened =
            int(&self.dedup_index, "index_bytes") as f64 / int(&self.dedup_index, "indexed") as f64;
        (built, opened)
    }
    fn hash_mbs(&self) -> f64 {
        num(&self.scan, "hashed_bytes") / num(&self.scan, "hash_secs") / 1e6
    }

    fn convert_table(&self) -> String {
        let disk = self.layout.disk as f64;
        let dedup = self.plain[2].best();
        let mut s = String::from(
            "| tool | time s (best) | median s | MB/s | output MiB | peak RSS | --dedup time / this |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for r in &self.plain {
            s += &format!(
                "| {} | {:.2} | {:.2} | {:.0} | {:.1} | {} | {:.2}x |\n",
                r.label,
                r.best(),
                median(&r.times()),
                disk / r.best() / 1e6,
                mib(r.bytes()),
                rss_mib(r.rss()),
                dedup / r.best()
            );
        }
        s
    }

    fn size_table(&self) -> String {
        let dedup = self.plain[2].bytes();
        let excess =
            dedup as f64 - self.ideal() as f64 - (self.plain_metadata() + self.dedup_table) as f64;
        format!(
            "| figure | value |\n|---|---|\n\
             | 64 KiB clusters of the raw file | {clusters} |\n\
             | all-zero clusters | {zero} |\n\
             | non-zero clusters | {nonzero} |\n\
             | distinct non-zero clusters (SHA-256) | {distinct} |\n\
             | ideal: distinct x 64 KiB | {ideal:.1} MiB |\n\
             | metadata of our plain output (its size - non-zero clusters x 64 KiB) | {meta:.2} MiB |\n\
             | dedup table (clusters `qemu-img check` reports as leaks) | {table:.2} MiB |\n\
             | `--dedup` output | {dedup_mib:.2} MiB ({ratio:.4}x ideal) |\n\
             | `--dedup` output - ideal - metadata - table | {excess:.2} MiB |\n\
             | plain output | {plain:.1} MiB |\n\
             | `qemu-img convert` output | {qemu:.1} MiB |\n\
             | `qcow2 check` of the `--dedup` output: indexed / shared clusters, bytes saved | {ix} / {sh} / {saved:.1} MiB |\n",
            clusters = int(&self.scan, "clusters"),
            zero = int(&self.scan, "zero"),
            nonzero = self.nonzero(),
            distinct = self.distinct(),
            ideal = mib(self.ideal()),
            meta = mib(self.plain_metadata()),
            table = mib(self.dedup_table),
            dedup_mib = mib(dedup),
            ratio = dedup as f64 / self.ideal() as f64,
            excess = excess / f64::from(1 << 20),
            plain = mib(self.plain[1].bytes()),
            qemu = mib(self.plain[0].bytes()),
            ix = int(&self.dedup_check, "indexed-clusters"),
            sh = int(&self.dedup_check, "shared-clusters"),
            saved = mib(int(&self.dedup_check, "bytes-saved")),
        )
    }

    fn compressed_table(&self) -> String {
        let mut s = String::from(
            "| run | time s (best) | median s | output MiB | peak RSS |\n|---|---|---|---|---|\n",
        );
        for r in &self.compressed {
            s += &format!(
                "| {} | {:.2} | {:.2} | {:.2} | {} |\n",
                r.label,
                r.best(),
                median(&r.times()),
                mib(r.bytes()),
                rss_mib(r.rss())
            );
        }
        s
    }

    fn goals(&self) -> String {
        let dedup = self.plain[2].bytes();
        let limit = self.size_limit();
        let c_dedup = self.compressed[1].bytes();
        let c_ratio = c_dedup as f64 / self.c_ideal() as f64;
        let rss = self.plain[2].rss();
        let (built, opened) = self.index_per_cluster();
        let (plain_s, dedup_s) = (self.plain[1].best(), self.plain[2].best());
        let mut s = format!(
            "- Time of `convert --dedup` against our plain convert of the same disk: {dedup_s:.2} \
             s against {plain_s:.2} s (best of each), {:.2}x the plain time (goal <= 1.00x): \
             **{}**.\n",
            dedup_s / plain_s,
            verdict(dedup_s <= plain_s),
        );
        s += &format!(
            "- Output size of `convert --dedup`: {:.2} MiB against 1.01 x ideal + metadata = \
             1.01 x {:.2} + {:.2} (L1/L2/refcounts) + {:.2} (dedup table) = {:.2} MiB: **{}** \
             ({:.4}x of that limit).\n",
            mib(dedup),
            mib(self.ideal()),
            mib(self.plain_metadata()),
            mib(self.dedup_table),
            limit / f64::from(1 << 20),
            verdict(dedup as f64 <= limit),
            dedup as f64 / limit,
        );
        s += &format!(
            "- Output size of `convert -c --dedup`: {:.2} MiB against the compressed distinct \
             clusters ({:.2} MiB, `convert -c` of a raw file holding only them) + its dedup \
             table ({:.2} MiB) = {:.2} MiB: {c_ratio:.4}x (goal <= {SIZE_GOAL:.2}x): **{}**. \
             Plain `-c`: {:.2} MiB, so `--dedup` saves {:.1}%.\n",
            mib(c_dedup),
            mib(self.compressed[2].bytes()),
            mib(self.c_table),
            mib(self.c_ideal()),
            verdict(c_ratio <= SIZE_GOAL),
            mib(self.compressed[0].bytes()),
            100.0 * (1.0 - c_dedup as f64 / self.compressed[0].bytes() as f64),
        );
        s += &match rss {
            Some(kib) => format!(
                "- Peak RSS of `convert --dedup`: {} against 64 MiB + index ({:.2} MiB) = \
                 {:.1} MiB: **{}**.\n",
                rss_mib(Some(kib)),
                int(&self.dedup_index, "index_bytes") as f64 / f64::from(1 << 20),
                self.rss_limit_kib() / 1024.0,
                verdict(kib as f64 <= self.rss_limit_kib()),
            ),
            None => "- Peak RSS of `convert --dedup`: not measured.\n".into(),
        };
        s += &format!(
            "- Index bytes per indexed cluster: {opened:.2} in the `--dedup` output opened for \
             writing ({} clusters, {} bytes), {built:.2} for a `DigestIndex` built from the \
             distinct digests, {:.2} in the {}-cluster image (goal <= {INDEX_GOAL:.0}): **{}**.\n",
            int(&self.dedup_index, "indexed"),
            int(&self.dedup_index, "index_bytes"),
            self.open_per_cluster(),
            int(&self.open, "indexed"),
            verdict(opened.max(built).max(self.open_per_cluster()) <= INDEX_GOAL),
        );
        s
    }

    fn open_per_cluster(&self) -> f64 {
        int(&self.open, "index_bytes") as f64 / int(&self.open, "indexed") as f64
    }

    /// The two [`qcow2_image::DedupOverwrite`] modes side by side.
    fn overwrite_table(&self) -> String {
        let ow = &self.overwrite;
        let get = |mode: &str, len: u64, key: &str| {
            ow.get(format!("{mode}_{len}"))
                .map_or(f64::NAN, |v| num(v, key))
        };
        let mut rows = String::from(
            "| writes | write elsewhere s | clear entry first s | clear first / elsewhere \
             | file MiB after (elsewhere / clear first) |\n|---|---|---|---|---|\n",
        );
        let mut verdicts = Vec::new();
        let mut default_faster = true;
        for (len, label) in [(65536u64, "64 KiB"), (4096, "4 KiB")] {
            let (e, c) = (
                get("elsewhere", len, "secs"),
                get("clear_first", len, "secs"),
            );
            rows += &format!(
                "| {label} | {e:.3} | {c:.3} | {:.2}x | {:.1} / {:.1} |\n",
                c / e,
                get("elsewhere", len, "file_bytes") / f64::from(1 << 20),
                get("clear_first", len, "file_bytes") / f64::from(1 << 20),
            );
            default_faster &= e <= c;
            verdicts.push(format!(
                "{label}: {}",
                if e <= c {
                    "write elsewhere"
                } else {
                    "clear first"
                }
            ));
        }
        format!(
            "{rows}\nEach run: a new dedup image of {filled} distinct 64 KiB clusters, then \
             {writes} writes of new data at random places among them (whole clusters, or 4 KiB \
             at random 4 KiB offsets), a flush every {every} writes and at the end, on the \
             work directory's file system with real fsyncs; best of 3 runs, interleaved \
             (in-process, `probe overwrite`). Every image passed `qcow2 check`. Faster: {v}. \
             {default}\n",
            filled = int(ow, "filled"),
            writes = int(ow, "writes"),
            every = int(ow, "flush_every"),
            v = verdicts.join(", "),
            default = if default_faster {
                "The engine's default, `DedupOverwrite::WriteElsewhere`, is the faster one \
                 for both sizes; `ClearFirst` stays for callers that want no new clusters."
            } else {
                "**The engine's default, `DedupOverwrite::WriteElsewhere`, is not the faster \
                 one for every size here: revisit the default.**"
            },
        )
    }

    pub(super) fn section(&self) -> String {
        let m = &self.machine;
        let disk_mib = self.layout.disk >> 20;
        let [_, b, c] = self.layout.copies();
        let rss = match self.rss {
            RssProbe::GnuTime => format!("`{GNU_TIME} -f %M` (the kernel's ru_maxrss of the tool)"),
            RssProbe::Proc => "`VmHWM` of `/proc/PID/status`, polled".into(),
        };
        let scale = if self.segment_mib == FULL_SEGMENT_MIB {
            String::new()
        } else {
            format!(
                " (a {} MiB segment, not the script's 600 MiB: a smaller run)",
                self.segment_mib
            )
        };
        let plain_ratio = self.plain[2].best() / self.plain[1].best();
        let qemu_ratio = self.plain[2].best() / self.plain[0].best();
        format!(
            "{HEADING}\n\n\
Deduplication measured in one run of\n\n```sh\ncargo xtask bench dedup\n```\n\n\
(`--size-mib N` for a smaller segment, `--quick` for 64 MiB, `--reps N`, \
`--open-clusters N`; it builds `cargo build --release -p qcow2-cli -p xtask` \
first, and everything measured in-process runs in that release xtask.)\n\n\
- **Machine:** {cpus} CPUs ({cpu}), Linux {kernel}, {rustc}; other builds shared \
the machine now and then, so the tables show the best of {reps} runs and the median.\n\
- **Reference:** {qemu}.\n\
- **Date:** {date}.\n\
- **Corpus:** `dup-{seg}M.raw`{scale}, laid out like `dup.raw` of \
`shared/bench/make-corpus.sh`: a {disk_mib} MiB raw disk holding the first {seg} MiB of \
the Engine benchmark's ext4 disk (files sampled from /usr, built in the same run) \
three times, at offsets 0, {b} and {c} bytes (64 KiB-aligned, not 1 MiB-aligned), then \
the ext4 disk's bytes from {seg} MiB on as a unique tail; every byte written.\n\
- **Method:** before each convert the destination is deleted and the source read \
once (warm page cache); time is wall time of the tool plus an fsync of its output \
after it exits; runs interleaved. Peak RSS: {rss}, largest over the runs. Default \
options: 64 KiB clusters, zlib for `-c`, one worker per core. The distinct clusters are \
found by the xtask itself (SHA-256 of every non-zero 64 KiB cluster of the raw file). \
Our plain output passed `qemu-img check` and `qemu-img compare`; every dedup output \
passed our `qcow2 check` (no errors, no dedup corruption) and `qcow2 compare` \
against the source (the benchmark fails otherwise).\n\n\
### Convert\n\n{convert}\n\
`--dedup` takes {plain_ratio:.2}x the time of our plain convert and {qemu_ratio:.2}x that \
of `qemu-img convert`.\n\n\
### Output size\n\n{sizes}\n\
### Compressed\n\n{compressed}\n\
The last row is the reference for the compressed ideal: `qcow2 convert -c` of a raw file \
holding each distinct non-zero cluster once ({distinct} clusters, first-seen order). The \
`-c --dedup` output's dedup table: {c_table:.2} MiB; `qcow2 check` of it: {c_ix} indexed, \
{c_sh} shared clusters.\n\n\
### Hashing, index, open, amend\n\n\
- SHA-256, one thread, `qcow2_dedup::hash_cluster` on every non-zero 64 KiB cluster of \
the raw file from memory: **{hash:.0} MB/s**, backend `{backend}` (`sha256_backend()`).\n\
- Index: the `--dedup` output opened for writing holds {ix} indexed clusters in {ixb} bytes \
(`dedup_index_stats()`); a `DigestIndex` built from the {ilen} distinct digests takes \
{ibytes} bytes.\n\
- Open for writing a dedup image with {oix} indexed clusters: **{open:.3} s** (best of \
3 opens from a warm page cache; runs: {open_times}); index {oixb} bytes. The image: \
`qcow2 convert --dedup -o cluster_size={ocs}` of a generated {oraw:.0} MiB raw file of \
{ocl} distinct non-zero {ocsk} KiB clusters (each its index in its first 8 bytes), which took \
{oconv:.2} s and wrote {osize:.1} MiB (peak RSS {orss}).\n\
- `qcow2 amend -o dedup=on` of our plain output of the same disk: **{amend:.2} s** \
(peak RSS {arss}); file size {ab0:.1} -> {ab1:.1} MiB, allocated {aa0:.1} -> {aa1:.1} MiB; \
`qcow2 check` after: {aix} indexed, {ash} shared clusters, {asaved:.1} MiB saved.\n\n\
### Overwriting indexed clusters\n\n{overwrite}\n\
### Goals\n\n{goals}",
            overwrite = self.overwrite_table(),
            cpus = m.cpus,
            cpu = m.cpu_model,
            kernel = m.kernel,
            rustc = m.rustc,
            reps = self.reps,
            qemu = m.qemu,
            date = m.date,
            seg = self.segment_mib,
            convert = self.convert_table(),
            sizes = self.size_table(),
            compressed = self.compressed_table(),
            distinct = self.distinct(),
            c_table = mib(self.c_table),
            c_ix = int(&self.c_check, "indexed-clusters"),
            c_sh = int(&self.c_check, "shared-clusters"),
            hash = self.hash_mbs(),
            backend = self
                .scan
                .get("backend")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            ix = int(&self.dedup_index, "indexed"),
            ixb = int(&self.dedup_index, "index_bytes"),
            ilen = int(&self.scan, "index_len"),
            ibytes = int(&self.scan, "index_bytes"),
            oix = int(&self.open, "indexed"),
            open = num(&self.open, "open_secs"),
            open_times = self
                .open
                .get("open_times")
                .and_then(Value::as_array)
                .map_or_else(String::new, |v| v
                    .iter()
                    .map(|t| format!("{:.3}", t.as_f64().unwrap_or(f64::NAN)))
                    .collect::<Vec<_>>()
                    .join(", ")),
            oixb = int(&self.open, "index_bytes"),
            ocs = OPEN_CLUSTER,
            ocsk = OPEN_CLUSTER / 1024,
            ocl = self.open_clusters,
            oraw = mib(self.open_clusters * OPEN_CLUSTER),
            oconv = self.open_convert.secs,
            osize = mib(self.open_size),
            orss = rss_mib(self.open_convert.rss_kib),
            amend = self.amend.secs,
            arss = rss_mib(self.amend.rss_kib),
            ab0 = mib(self.amend_before.0),
            ab1 = mib(self.amend_after.0),
            aa0 = mib(self.amend_before.1),
            aa1 = mib(self.amend_after.1),
            aix = int(&self.amend_check, "indexed-clusters"),
            ash = int(&self.amend_check, "shared-clusters"),
            asaved = mib(int(&self.amend_check, "bytes-saved")),
            goals = self.goals(),
        )
    }
}
