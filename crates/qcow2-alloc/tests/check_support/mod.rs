//! Helpers shared by the check and repair tests: golden images, qemu-img,
//! images made by qemu-img/qemu-io, and refcount surgery.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qcow2_alloc::check::CheckReport;
use qcow2_format::tables::{RefcountBlock, RefcountOrder};
use qcow2_format::Header;
use qcow2_io::FileStorage;

// The conformance crate depends on this one, so its writer of the stored
// goldens is included as a file (it uses std only).
#[path = "../../../../conformance/src/sparse_hex.rs"]
mod sparse_hex;

/// The qemu-made golden images written out in full (they are stored as
/// sparse hex); written once per test process.
pub fn golden_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/golden/qemu");
        let dst = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden-qemu");
        sparse_hex::materialize(&src, &dst)
            .unwrap_or_else(|e| panic!("writing the golden images out: {e}"));
        dst
    })
    .clone()
}

/// File names of every image of `manifest.json` (read without a JSON
/// parser: each entry has one `"file": "NAME"` pair).
pub fn golden_files() -> Vec<String> {
    let text = fs::read_to_string(golden_dir().join("manifest.json")).expect("manifest.json");
    let files: Vec<String> = text
        .split("\"file\":")
        .skip(1)
        .filter_map(|rest| rest.split('"').nth(1).map(str::to_string))
        .collect();
    assert!(
        files.len() > 10,
        "manifest.json lists too few images: {files:?}"
    );
    files
}

/// Runs `tool ARGS` in `dir`; panics (failing the test) when it is missing.
pub fn run(dir: &Path, tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required for these tests (install qemu-utils): {e}"))
}

/// Runs qemu-img and asserts it succeeded.
pub fn qemu_img_ok(dir: &Path, args: &[&str]) {
    let out = run(dir, "qemu-img", args);
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs qemu-io commands on a qcow2 image.
pub fn qemu_io(dir: &Path, file: &str, commands: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(file);
    let out = run(dir, "qemu-io", &args);
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("failed"),
        "qemu-io {commands:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The numeric keys of `qemu-img check --output=json FILE` (run in `dir`)
/// and its exit status.
pub fn qemu_check(dir: &Path, file: &str, extra: &[&str]) -> (BTreeMap<String, u64>, i32) {
    let mut args = vec!["check", "--output=json"];
    args.extend(extra);
    // An encrypted golden opens only with its key (the secret `cargo
    // xtask golden` makes it with).
    let image_opts = format!("driver=qcow2,file.filename={file},encrypt.key-secret=sec0");
    if header(&dir.join(file)).crypt_method != 0 {
        args.extend([
            "--object",
            "secret,id=sec0,data=golden",
            "--image-opts",
            &image_opts,
        ]);
    } else {
        args.extend(["-f", "qcow2", file]);
    }
    let out = run(dir, "qemu-img", &args);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut keys = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim().trim_end_matches(',');
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        if let Ok(n) = value.parse::<u64>() {
            keys.insert(key.trim_matches('"').to_string(), n);
        }
    }
    (keys, out.status.code().unwrap_or(-1))
}

/// Our report as the numeric keys qemu-img prints (optional keys only when
/// non-zero, as qemu-img omits them).
pub fn numbers(report: &CheckReport) -> BTreeMap<String, u64> {
    let mut keys = BTreeMap::new();
    keys.insert("check-errors".to_string(), report.check_errors);
    for (key, value) in [
        ("image-end-offset", report.image_end_offset),
        ("total-clusters", report.total_clusters),
        ("allocated-clusters", report.allocated_clusters),
        ("fragmented-clusters", report.fragmented_clusters),
        ("compressed-clusters", report.compressed_clusters),
        ("corruptions", report.corruptions),
        ("leaks", report.leaks),
        ("corruptions-fixed", report.corruptions_fixed),
        ("leaks-fixed", report.leaks_fixed),
    ] {
        if value != 0 {
            keys.insert(key.to_string(), value);
        }
    }
    keys
}

/// Our check of `path`, opened read-only.
pub fn our_check(path: &Path) -> CheckReport {
    let storage = FileStorage::open(path, false).expect("open image");
    qcow2_alloc::check::check(&storage, &[]).expect("check completes")
}

/// Asserts our check of `dir/file` has the numbers qemu-img's has.
pub fn assert_same_as_qemu(dir: &Path, file: &str) -> CheckReport {
    let (qemu, _) = qemu_check(dir, file, &[]);
    assert!(
        !qemu.is_empty(),
        "qemu-img check printed no JSON for {file}"
    );
    let ours = our_check(&dir.join(file));
    assert_eq!(
        numbers(&ours),
        qemu,
        "{file}: ours (left) vs qemu-img (right); findings: {:#?}",
        ours.findings
    );
    ours
}

/// A scratch directory removed when the test ends.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// Creates `dir/name` with `qemu-img create -f qcow2 -o OPTS name SIZE`
/// and runs the qemu-io `writes` on it.
pub fn make_image(dir: &Path, name: &str, opts: &str, size: &str, writes: &[&str]) -> PathBuf {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([name, size]);
    qemu_img_ok(dir, &args);
    if !writes.is_empty() {
        qemu_io(dir, name, writes);
    }
    dir.join(name)
}

/// The parsed header of the image at `path`.
pub fn header(path: &Path) -> Header {
    let bytes = fs::read(path).expect("read image");
    Header::parse(&bytes).expect("header parses")
}

/// Reads the big-endian u64 at `offset`.
pub fn peek_u64(path: &Path, offset: u64) -> u64 {
    let bytes = fs::read(path).expect("read image");
    let at = offset as usize;
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Writes `bytes` at `offset` in place.
pub fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for writing");
    file.write_all_at(bytes, offset).expect("write");
}

/// Writes a big-endian u64 at `offset`.
pub fn poke_u64(path: &Path, offset: u64, value: u64) {
    poke(path, offset, &value.to_be_bytes());
}

/// (block offset, index in block, order) of `cluster`'s stored refcount.
fn refcount_slot(path: &Path, cluster: u64) -> (u64, u64, RefcountOrder) {
    let h = header(path);
    let geo = h.geometry().expect("geometry");
    let order = RefcountOrder::new(h.refcount_order).expect("order");
    let (index, i) = order.locate(qcow2_format::ClusterIndex(cluster), geo);
    let block = peek_u64(path, h.refcount_table_offset.get() + index * 8);
    assert_ne!(block, 0, "no refcount block covers cluster {cluster}");
    (block, i, order)
}

/// The stored refcount of `cluster`.
pub fn refcount(path: &Path, cluster: u64) -> u64 {
    let (block, i, order) = refcount_slot(path, cluster);
    let cs = 1u64 << header(path).cluster_bits;
    let bytes = fs::read(path).expect("read image");
    let buf = bytes[block as usize..(block + cs) as usize].to_vec();
    RefcountBlock::new(buf, order, block)
        .get(i)
        .expect("index in block")
}

/// Sets the stored refcount of `cluster` in place.
pub fn set_refcount(path: &Path, cluster: u64, value: u64) {
    let (block, i, order) = refcount_slot(path, cluster);
    let cs = 1u64 << header(path).cluster_bits;
    let bytes = fs::read(path).expect("read image");
    let mut buf = bytes[block as usize..(block + cs) as usize].to_vec();
    RefcountBlock::new(&mut buf[..], order, block)
        .set(i, value)
        .expect("value fits the refcount width");
    poke(path, block, &buf);
}

/// Host offset of guest offset `guest` (a plain data cluster), from the
/// active tables; standard L2 entries only.
pub fn host_of(path: &Path, guest: u64) -> u64 {
    let h = header(path);
    let cs = 1u64 << h.cluster_bits;
    let per_l2 = cs / 8;
    let l1 = peek_u64(path, h.l1_table_offset.get() + (guest / cs / per_l2) * 8);
    let l2 = l1 & 0x00ff_ffff_ffff_fe00;
    let entry = peek_u64(path, l2 + (guest / cs % per_l2) * 8);
    entry & 0x00ff_ffff_ffff_fe00
}

/// Offset of the L2 table covering guest offset 0.
pub fn first_l2(path: &Path) -> u64 {
    let h = header(path);
    peek_u64(path, h.l1_table_offset.get()) & 0x00ff_ffff_ffff_fe00
}

/// Copies `src` into `dir` as `name`.
pub fn copy(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    fs::copy(src, &dst).expect("copy image");
    dst
}

/// Whether `qemu-img check` calls the image clean (exit status 0).
pub fn qemu_clean(path: &Path) -> bool {
    let out = run(
        path.parent().expect("parent"),
        "qemu-img",
        &["check", "-f", "qcow2", &path.to_string_lossy()],
    );
    if !out.status.success() {
        eprintln!(
            "qemu-img check {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

/// Whether `qemu-img compare` says both images have the same content.
pub fn same_content(a: &Path, b: &Path) -> bool {
    let out = run(
        a.parent().expect("parent"),
        "qemu-img",
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            &a.to_string_lossy(),
            &b.to_string_lossy(),
        ],
    );
    out.status.success()
}

/// The raw content of an image, via `qemu-img convert -O raw`.
pub fn raw_content(path: &Path) -> Vec<u8> {
    let dir = path.parent().expect("parent");
    let raw = dir.join(format!(
        "{}.raw",
        path.file_name().expect("name").to_string_lossy()
    ));
    qemu_img_ok(
        dir,
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            &path.to_string_lossy(),
            &raw.to_string_lossy(),
        ],
    );
    fs::read(raw).expect("read raw")
}
