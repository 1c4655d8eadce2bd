//! `cargo xtask golden [--check | --writer | --materialize DIR]`: the qcow2
//! images made by the real `qemu-img`, and the pins of our writer's images.
//!
//! Every image is described by the exact `qemu-img` command lines that make it,
//! run from `conformance/golden/qemu/` with relative names so the directory can
//! move. `qemu-img create` is deterministic, so regenerating gives the same
//! bytes; `--check` regenerates into a scratch directory and compares, which
//! catches both hand edits and a `qemu-img` that writes differently.

use std::path::{Path, PathBuf};

use qcow2_conformance::engine_images;

use crate::golden_store::{check, generate};

/// Where the images live, relative to the workspace root.
pub(crate) const GOLDEN_DIR: &str = "conformance/golden/qemu";

/// One golden image and the commands that make it.
pub(crate) struct Golden {
    /// Stable name; the file is `<name>.qcow2`.
    pub(crate) name: String,
    /// Commands run before the create (for example a raw backing file).
    pub(crate) pre: Vec<Vec<String>>,
    /// The `qemu-img create` command.
    pub(crate) create: Vec<String>,
    /// Commands run after the create (for example `qemu-img bitmap --add`).
    pub(crate) post: Vec<Vec<String>>,
    /// Other files in the directory the image refers to (backing, data file).
    pub(crate) companions: Vec<&'static str>,
}

impl Golden {
    pub(crate) fn file(&self) -> String {
        format!("{}.qcow2", self.name)
    }

    /// Appends one `qemu-io -c WRITE` on the image per entry of `writes`.
    fn qemu_io(&mut self, writes: &[&str]) {
        let file = self.file();
        for w in writes {
            self.post
                .push(strings(&[QEMU_IO, "-f", "qcow2", "-c", w, &file]));
        }
    }
}

/// `qemu-img create -f qcow2 [-o OPTS] FILE [SIZE]` for the image `name`.
fn create(name: &str, opts: &str, size: Option<&str>) -> Golden {
    let mut args = strings(&["create", "-f", "qcow2"]);
    if !opts.is_empty() {
        args.extend(strings(&["-o", opts]));
    }
    args.push(format!("{name}.qcow2"));
    args.extend(size.map(str::to_string));
    Golden {
        name: name.to_string(),
        pre: Vec::new(),
        create: args,
        post: Vec::new(),
        companions: Vec::new(),
    }
}

/// An encrypted 1 MiB image made with the secret [`SECRET`]; `opts` (the
/// `-o` value) names the format and the secret as `encrypt.key-secret=sec0`.
fn encrypted(name: &str, opts: &str) -> Golden {
    let mut g = create(name, "", Some("1M"));
    g.create = strings(&["create", "-f", "qcow2", "--object", SECRET, "-o"]);
    g.create.push(opts.to_string());
    g.create.extend([g.file(), "1M".to_string()]);
    g
}

/// The secret object the encrypted goldens are made and read with.
const SECRET: &str = "secret,id=sec0,data=golden";

/// An overlay of `backing` (format `fmt`), named relatively so the directory can move.
fn overlay(name: &str, opts: &str, backing: &'static str, fmt: &str) -> Golden {
    let mut g = create(name, opts, None);
    // Backing options go before the file name, as qemu-img documents them.
    let at = g.create.len() - 1;
    g.create
        .splice(at..at, strings(&["-b", backing, "-F", fmt]));
    g.companions.push(backing);
    g
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The catalogue. Names are stable: tests and the conformance suite refer to them.
pub(crate) fn catalogue() -> Vec<Golden> {
    let mut all = vec![
        create("default", "", Some("64M")),
        create("cluster-512", "cluster_size=512", Some("64M")),
        create("cluster-4k", "cluster_size=4K", Some("64M")),
        create("cluster-2m", "cluster_size=2M", Some("1G")),
    ];
    for bits in [1, 2, 4, 8, 16, 32, 64] {
        all.push(create(
            &format!("refcount-bits-{bits}"),
            &format!("refcount_bits={bits}"),
            Some("64M"),
        ));
    }
    all.extend([
        create("compat-0.10", "compat=0.10", Some("64M")),
        create("compat-0.10-cluster-512", "compat=0.10,cluster_size=512", Some("1M")),
        create("compat-1.1", "compat=1.1", Some("64M")),
        create("lazy-refcounts", "lazy_refcounts=on", Some("64M")),
        create("extended-l2-64k", "extended_l2=on", Some("1G")),
        create("extended-l2-16k", "extended_l2=on,cluster_size=16K", Some("1G")),
        create("compression-zlib", "compression_type=zlib", Some("64M")),
        create("compression-zstd", "compression_type=zstd", Some("64M")),
        create(
            "all-v3-features",
            "cluster_size=16K,extended_l2=on,compression_type=zstd,lazy_refcounts=on,refcount_bits=1",
            Some("1G"),
        ),
        // `base` must come before the overlays that name it.
        create("base", "", Some("1M")),
        overlay("backing-qcow2", "", "base.qcow2", "qcow2"),
        overlay("compat-0.10-backing", "compat=0.10", "base.qcow2", "qcow2"),
    ]);
    let mut raw = overlay("backing-raw", "", "base.raw", "raw");
    raw.pre
        .push(strings(&["create", "-f", "raw", "base.raw", "1M"]));
    all.push(raw);
    let mut df = create("data-file", "data_file=data-file.data", Some("1M"));
    df.companions.push("data-file.data");
    all.push(df);
    let mut dfr = create(
        "data-file-raw",
        "data_file=data-file-raw.data,data_file_raw=on",
        Some("1M"),
    );
    dfr.companions.push("data-file-raw.data");
    // With data_file_raw the data file alone must stay the guest disk: a
    // zero write reaches the data file too, not only the L2 table.
    dfr.qemu_io(&[
        "write -P 0x5b 64k 8k",
        "write -P 0x5c 128k 64k",
        "write -z 128k 4k",
    ]);
    all.push(dfr);
    let mut bm = create("bitmaps", "", Some("1M"));
    bm.post
        .push(strings(&["bitmap", "--add", "bitmaps.qcow2", "b0"]));
    bm.post.push(strings(&[
        "bitmap",
        "--add",
        "-g",
        "128K",
        "--disable",
        "bitmaps.qcow2",
        "b1",
    ]));
    // A write while b0 is enabled gives it a data cluster; b1 stays empty.
    bm.qemu_io(&["write -P 0x11 0 64k"]);
    all.push(bm);
    all.extend([
        create("prealloc-metadata", "preallocation=metadata", Some("1M")),
        create("size-0", "", Some("0")),
        create("size-512", "", Some("512")),
        // qemu-img rounds 1000 bytes up to a whole sector (1024).
        create("size-1000", "", Some("1000")),
        // 999.5 KiB: qemu-img prints it as "1e+03 KiB".
        create("size-1023488", "", Some("1023488")),
        create("size-1.5g", "", Some("1536M")),
        create("size-4t", "", Some("4T")),
    ]);
    // Images with data, written by qemu-io with fixed patterns (deterministic bytes).
    let data = [
        (
            "data-v2",
            "compat=0.10",
            &["write -P 0x5a 0 128k", "write -P 0xa5 1M 64k"][..],
        ),
        (
            "data-v3",
            "",
            &[
                "write -P 0x5a 0 128k",
                "write -z 1M 64k",
                "write -P 0x11 2M 4k",
                "discard 2M 64k",
            ][..],
        ),
        (
            "data-extended-l2",
            "extended_l2=on",
            &[
                "write -P 0x01 0 4k",
                "write -P 0x02 36k 8k",
                "write -z 64k 8k",
            ][..],
        ),
        // A compressed cluster with extended L2 entries: its subcluster
        // bitmap must stay zero (iotest 271).
        (
            "compressed-extended-l2",
            "extended_l2=on",
            &["write -c -P 0x35 0 64k"][..],
        ),
        // 512-byte clusters: one L2 table maps 32 KiB, so these writes go
        // through L1 entries 0, 1 and 3, the last inside its clusters.
        (
            "data-512",
            "cluster_size=512",
            &[
                "write -P 0x71 0 1k",
                "write -P 0x72 40k 1k",
                "write -P 0x73 100000 300",
            ][..],
        ),
        (
            "compressed-zlib",
            "compression_type=zlib",
            &["write -c -P 0x33 0 64k", "write -c -P 0x44 128k 64k"][..],
        ),
        (
            "compressed-zstd",
            "compression_type=zstd",
            &["write -c -P 0x33 0 64k", "write -c -P 0x44 128k 64k"][..],
        ),
    ];
    for (name, opts, writes) in data {
        let mut g = create(name, opts, Some("4M"));
        g.qemu_io(writes);
        all.push(g);
    }
    // A backing chain with data on both levels. The overlay is larger than
    // its backing file and has extended L2 entries with 512-byte
    // subclusters, so one cluster mixes its own data with the backing
    // file's, a zero cluster hides backing data, and reads past the
    // backing file's end give zeros.
    let mut base = create("chain-base", "cluster_size=4K", Some("256K"));
    base.qemu_io(&["write -P 0x22 0 32k", "write -P 0x23 200k 8k"]);
    all.push(base);
    let mut top = overlay(
        "chain-top",
        "extended_l2=on,cluster_size=16K",
        "chain-base.qcow2",
        "qcow2",
    );
    top.create.push("512K".to_string());
    top.qemu_io(&[
        "write -P 0x33 1k 1k",
        "write -z 16k 16k",
        "write -P 0x44 300k 1k",
    ]);
    all.push(top);
    // An internal snapshot sharing a cluster with the active image, written
    // again after the snapshot (a copy-on-write by QEMU); and the same
    // image with the snapshot loaded. Snapshot dates differ per run
    // (golden_store::KEYED).
    for (name, apply) in [("snapshot", false), ("snapshot-applied", true)] {
        let mut g = create(name, "cluster_size=4K", Some("1M"));
        let file = g.file();
        g.qemu_io(&["write -P 0x61 0 8k", "write -P 0x63 64k 4k"]);
        g.post.push(strings(&["snapshot", "-c", "s0", &file]));
        g.qemu_io(&["write -P 0x62 0 4k"]);
        if apply {
            g.post.push(strings(&["snapshot", "-a", "s0", &file]));
        }
        all.push(g);
    }
    // Encrypted with the legacy AES method (crypt_method 1): the key comes
    // from the passphrase alone, so the ciphertext is the same every run.
    let mut aes = encrypted(
        "aes",
        "encrypt.format=aes,encrypt.key-secret=sec0,cluster_size=4K",
    );
    aes.post.push(strings(&[
        QEMU_IO,
        "--object",
        SECRET,
        "--image-opts",
        "-c",
        "write -P 0x5a 0 4k",
        "driver=qcow2,file.filename=aes.qcow2,encrypt.key-secret=sec0",
    ]));
    all.push(aes);
    // An encrypted image: the key slots hold random salts and key material,
    // so a regeneration differs inside the LUKS area (golden_store::KEYED).
    all.push(encrypted(
        "luks",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
    ));
    all
}

/// A command whose first word is this runs `qemu-io` instead of `qemu-img`.
pub(crate) const QEMU_IO: &str = "qemu-io";

/// Runs the subcommand.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let root = workspace_root();
    match args {
        [] => {
            let dir = root.join(GOLDEN_DIR);
            generate(&root.join("target").join("golden-make"), &dir)?;
            println!(
                "golden: wrote {} images to {}",
                catalogue().len(),
                dir.display()
            );
            write_writer_golden()
        }
        [flag] if flag == "--check" => check(&root),
        // Our writer's images only: after an intended change of what the
        // engine writes, without touching the qemu-made ones.
        [flag] if flag == "--writer" => write_writer_golden(),
        // The stored sparse hex written out as real files, for tools.
        [flag, dir] if flag == "--materialize" => {
            let dir = qcow2_conformance::corpus::materialize_golden(Path::new(dir))?;
            println!(
                "golden: wrote the qemu goldens out in full to {}",
                dir.display()
            );
            Ok(())
        }
        _ => Err("usage: cargo xtask golden [--check | --writer | --materialize DIR]".to_string()),
    }
}

/// Rewrites `conformance/golden/writer/` with our writer's images.
fn write_writer_golden() -> Result<(), String> {
    let writer_dir = engine_images::golden_writer_dir();
    let written = engine_images::write_golden(&writer_dir)?;
    println!(
        "golden: wrote {written} images of our writer to {}",
        writer_dir.display()
    );
    Ok(())
}

pub(crate) fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}
