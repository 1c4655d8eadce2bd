//! The engine benchmark's disk: a fully allocated raw image holding an ext4
//! filesystem made by `mkfs.ext4 -d` from real files sampled out of /usr
//! (about 60% of the disk is file data, the rest free space, which reads as
//! zeros). Built once under `target/bench-corpus/` and reused.

use std::fs::{self, File, FileTimes};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// Where the files come from.
const ROOTS: [&str; 6] = [
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/libexec",
    "/usr/share",
    "/usr/include",
];
/// File data as a fraction of the disk (1.2 GiB of a 2 GiB disk).
const FILL: f64 = 0.6;
/// Fixed identities and times, so the same /usr gives the same image.
const FS_UUID: &str = "5eed0000-0000-4000-8000-00000000c0de";
const HASH_SEED: &str = "5eed0000-0000-4000-8000-00000000beef";
const EPOCH: u64 = 1_700_000_000;
const MKFS: &str = "/usr/sbin/mkfs.ext4";
const E2FSCK: &str = "/usr/sbin/e2fsck";

/// Regular files under `dir` (symlinks not followed), sorted, with sizes.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, out);
        } else if meta.is_file() {
            out.push((path, meta.len()));
        }
    }
}

/// FNV-1a over the path: a fixed pseudo-random order that spreads the
/// sample across the whole tree instead of taking its first directories.
fn sample_key(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in b"engine-corpus:".iter().chain(path.as_os_str().as_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The raw image of `size_mib` MiB, built first if absent.
pub(crate) fn ensure(dir: &Path, size_mib: u64) -> Result<PathBuf, String> {
    let size = size_mib << 20;
    let image = dir.join(format!("fs-{size_mib}M.raw"));
    if fs::metadata(&image).is_ok_and(|m| m.len() == size) {
        println!("corpus: reusing {}", image.display());
        return Ok(image);
    }
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let stage = dir.join(format!("stage-{size_mib}M"));
    let sparse = dir.join(format!("fs-{size_mib}M.sparse.tmp"));
    let full = dir.join(format!("fs-{size_mib}M.full.tmp"));
    let result = build(&stage, &sparse, &full, size)
        .and_then(|()| fs::rename(&full, &image).map_err(|e| format!("{}: {e}", image.display())));
    let _ = fs::remove_dir_all(&stage);
    let _ = fs::remove_file(&sparse);
    let _ = fs::remove_file(&full);
    result.map(|()| image)
}

fn build(stage: &Path, sparse: &Path, full: &Path, size: u64) -> Result<(), String> {
    let target = (size as f64 * FILL) as u64;
    let (files, bytes) = stage_files(stage, target)?;
    println!(
        "corpus: staged {files} files, {:.1} MiB, from {}",
        bytes as f64 / f64::from(1 << 20),
        ROOTS.join(" ")
    );

    println!("corpus: mkfs.ext4 -d into a {} MiB image", size >> 20);
    let file = File::create(sparse).map_err(|e| format!("{}: {e}", sparse.display()))?;
    file.set_len(size)
        .map_err(|e| format!("{}: {e}", sparse.display()))?;
    drop(file);
    let extended = format!("hash_seed={HASH_SEED},root_owner=0:0");
    run_tool(
        Command::new(MKFS)
            .env("E2FSPROGS_FAKE_TIME", EPOCH.to_string())
            .args([
                "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-i", "16384",
            ])
            .args(["-L", "corpus", "-U", FS_UUID, "-E", &extended, "-d"])
            .arg(stage)
            .arg(sparse),
    )?;
    run_tool(
        Command::new(E2FSCK)
            .env("E2FSPROGS_FAKE_TIME", EPOCH.to_string())
            .arg("-fn")
            .arg(sparse),
    )?;

    // mkfs leaves holes; every byte is written here so that a converter
    // really has to read the whole disk (no SEEK_DATA short cuts).
    println!("corpus: writing the fully allocated image");
    let mut input = File::open(sparse).map_err(|e| format!("{}: {e}", sparse.display()))?;
    let mut output = File::create(full).map_err(|e| format!("{}: {e}", full.display()))?;
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", sparse.display()))?;
        if n == 0 {
            break;
        }
        output
            .write_all(&buf[..n])
            .map_err(|e| format!("{}: {e}", full.display()))?;
    }
    output
        .sync_all()
        .map_err(|e| format!("{}: {e}", full.display()))?;
    if output.metadata().map(|m| m.len()).unwrap_or(0) != size {
        return Err(format!("{} has the wrong size", full.display()));
    }
    Ok(())
}

/// Copies files picked in [`sample_key`] order until `target` bytes, in
/// sorted path order (so directories are created in a fixed order), with
/// fixed modes and times. Returns the file count and bytes.
fn stage_files(stage: &Path, target: u64) -> Result<(usize, u64), String> {
    let _ = fs::remove_dir_all(stage);
    fs::create_dir_all(stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    let mut candidates = Vec::new();
    for root in ROOTS {
        walk(Path::new(root), &mut candidates);
    }
    candidates.sort_by_key(|(path, _)| sample_key(path));
    let mut chosen = Vec::new();
    let mut total = 0;
    for (path, len) in candidates {
        if total >= target {
            break;
        }
        total += len;
        chosen.push(path);
    }
    chosen.sort();

    let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH);
    let times = FileTimes::new().set_accessed(epoch).set_modified(epoch);
    let mut files = 0;
    let mut bytes = 0;
    for src in chosen {
        let Ok(rel) = src.strip_prefix("/") else {
            continue;
        };
        let dst = stage.join(rel);
        let copied = dst
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::copy(&src, &dst));
        let Ok(len) = copied else {
            let _ = fs::remove_file(&dst);
            continue; // unreadable or vanished: the sample just shrinks
        };
        let exec = fs::metadata(&src).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
        let mode = if exec { 0o755 } else { 0o644 };
        fs::set_permissions(&dst, fs::Permissions::from_mode(mode))
            .and_then(|()| File::options().write(true).open(&dst))
            .and_then(|f| f.set_times(times))
            .map_err(|e| format!("{}: {e}", dst.display()))?;
        files += 1;
        bytes += len;
    }
    fix_dirs(stage, times)?;
    Ok((files, bytes))
}

/// Gives every directory under (and including) `dir` mode 0755 and the
/// fixed times, deepest first (creating entries changes a parent's mtime).
fn fix_dirs(dir: &Path, times: FileTimes) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fix_dirs(&entry.path(), times)?;
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .and_then(|()| File::open(dir))
        .and_then(|f| f.set_times(times))
        .map_err(|e| format!("{}: {e}", dir.display()))
}

fn run_tool(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} failed ({}): {}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
