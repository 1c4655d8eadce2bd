//! Making the qemu goldens and storing them: `qemu-img` writes real files in
//! a work directory; the golden directory keeps each as sparse hex
//! (`FILE.hex`, see `conformance/src/sparse_hex.rs`), with a manifest that
//! records every file's SHA-256, the commands, the qemu-img version and the
//! codec libraries it used. Tests write the files back out under `target/`.

use std::fs;
use std::path::Path;
use std::process::Command;

use qcow2_conformance::corpus::sha256_hex;
use qcow2_conformance::sparse_hex;
use serde_json::{json, Value};

use crate::golden::{catalogue, Golden, GOLDEN_DIR, QEMU_IO};

/// Images that differ per run: keyed with random salts and key material
/// (compared outside the LUKS area the encryption extension names), or
/// holding snapshots with their creation dates (compared with the dates
/// blanked). Their SHA-256 is recorded but not compared.
const KEYED: &[&str] = &["luks.qcow2", "snapshot.qcow2", "snapshot-applied.qcow2"];

/// The packages whose libraries qemu-img compresses with (Debian names).
const CODEC_PACKAGES: &[&str] = &["zlib1g", "libzstd1"];

/// Runs every catalogue command in `work` (emptied first), then stores the
/// sparse hex of every file, the manifest and the README in `store`.
pub(crate) fn generate(work: &Path, store: &Path) -> Result<(), String> {
    if work.exists() {
        fs::remove_dir_all(work).map_err(|e| format!("clearing {}: {e}", work.display()))?;
    }
    fs::create_dir_all(work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let version = first_line(&qemu_img(work, &["--version".to_string()])?);
    let golden = catalogue();
    for g in &golden {
        for cmd in g.pre.iter().chain([&g.create]).chain(&g.post) {
            match cmd.split_first() {
                Some((tool, rest)) if tool == QEMU_IO => run_tool(work, QEMU_IO, rest)?,
                _ => qemu_img(work, cmd)?,
            };
        }
    }
    fs::create_dir_all(store).map_err(|e| format!("creating {}: {e}", store.display()))?;
    remove_generated(store)?;
    let mut files: Vec<String> = golden
        .iter()
        .flat_map(|g| std::iter::once(g.file()).chain(g.companions.iter().map(|c| c.to_string())))
        .collect();
    files.sort();
    files.dedup();
    for file in &files {
        let bytes = read(&work.join(file))?;
        let header = [
            format!("{GOLDEN_DIR}/{file}, made by `cargo xtask golden` with {version}"),
            "(commands in manifest.json). Sparse hex: bytes not listed are zero;".to_string(),
            "tests write the file out under target/ (conformance/src/sparse_hex.rs).".to_string(),
        ];
        write(
            &store.join(format!("{file}.hex")),
            &sparse_hex::dump(&bytes, &header),
        )?;
    }
    let manifest = manifest(work, &golden, &version)?;
    write(&store.join("manifest.json"), &manifest)?;
    write(&store.join("README.md"), &readme(&version))
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

/// Deletes what a previous run stored, so renamed or dropped images do not
/// linger (the full-size files of older layouts included).
fn remove_generated(dir: &Path) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        let owned = ["hex", "qcow2", "raw", "data"].contains(&ext)
            || path.file_name().is_some_and(|n| n == "manifest.json");
        if owned && path.is_file() {
            fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Regenerates into a scratch directory and compares every stored file
/// (sparse hex and manifest) with what is checked in.
pub(crate) fn check(root: &Path) -> Result<(), String> {
    let golden_dir = root.join(GOLDEN_DIR);
    let stale = qcow2_conformance::engine_images::stale_golden(
        &qcow2_conformance::engine_images::golden_writer_dir(),
    )?;
    if !stale.is_empty() {
        return Err(format!(
            "structure of our writer's images differs from the pinned one (run `cargo xtask \
             golden --writer` if the change is intended): {}",
            stale.join(", ")
        ));
    }
    let recorded = recorded_version(&golden_dir)?;
    let local = first_line(&qemu_img(root, &["--version".to_string()])?);
    if local != recorded {
        // Another qemu-img may lay images out differently: comparing its
        // output with ours would say nothing about the goldens.
        println!(
            "golden: our writer's images match; the qemu-made ones were NOT compared: \
             they were made with `{recorded}`, this machine has `{local}`"
        );
        return Ok(());
    }
    let scratch = root.join("target").join("golden-check");
    let fresh = scratch.join("store");
    generate(&scratch.join("work"), &fresh)?;
    let names = |dir: &Path| -> Result<Vec<String>, String> {
        let mut n: Vec<String> = fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        n.sort();
        Ok(n)
    };
    let (stored, made) = (names(&golden_dir)?, names(&fresh)?);
    if stored != made {
        return Err(format!(
            "the golden directory holds {stored:?}, a fresh regeneration {made:?}"
        ));
    }
    let libraries = |dir: &Path| -> Option<Value> {
        let text = fs::read_to_string(dir.join("manifest.json")).ok()?;
        serde_json::from_str::<Value>(&text)
            .ok()
            .map(|v| v["codec_libraries"].clone())
    };
    let (recorded_libs, local_libs) = (libraries(&golden_dir), libraries(&fresh));
    if recorded_libs != local_libs {
        println!(
            "golden: the codec libraries differ from the recorded ones ({} here, {} recorded); \
             the images are compared all the same",
            local_libs.unwrap_or_default(),
            recorded_libs.unwrap_or_default()
        );
    }
    let differing: Vec<&String> = made
        .iter()
        .filter(|n| !same_file(&golden_dir.join(n), &fresh.join(n), n))
        .collect();
    if differing.is_empty() {
        println!("golden: {} files match a fresh regeneration", made.len());
        Ok(())
    } else {
        Err(format!(
            "golden files differ from a fresh regeneration (run `cargo xtask golden`): {}",
            differing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Whether a stored file and its regeneration agree: byte for byte, but for
/// the images of [`KEYED`] (compared with their LUKS areas and snapshot
/// dates blanked), their SHA-256
/// and the codec library versions in the manifest.
fn same_file(stored: &Path, fresh: &Path, name: &str) -> bool {
    let (Ok(a), Ok(b)) = (fs::read_to_string(stored), fs::read_to_string(fresh)) else {
        return false;
    };
    if name
        .strip_suffix(".hex")
        .is_some_and(|i| KEYED.contains(&i))
    {
        let blank = |text: &str| {
            sparse_hex::parse(text)
                .ok()
                .map(|b| blank_snapshot_dates(blank_luks_area(b)))
        };
        return blank(&a).is_some() && blank(&a) == blank(&b);
    }
    if name == "manifest.json" {
        let drop_keyed = |text: &str| -> Option<Value> {
            let mut v: Value = serde_json::from_str(text).ok()?;
            // Library versions are reported by `check`, not compared: the
            // same qemu-img may link a patched zlib or zstd build.
            v["codec_libraries"] = Value::Null;
            for entry in v["images"].as_array_mut()? {
                if entry["file"].as_str().is_some_and(|f| KEYED.contains(&f)) {
                    entry["sha256"] = Value::Null;
                }
            }
            Some(v)
        };
        return drop_keyed(&a).is_some() && drop_keyed(&a) == drop_keyed(&b);
    }
    a == b
}

/// `bytes` with the area the encryption header pointer names set to zero.
fn blank_luks_area(mut bytes: Vec<u8>) -> Vec<u8> {
    let range = qcow2_format::HeaderArea::parse(&bytes)
        .ok()
        .and_then(|area| {
            area.chain.extensions.iter().find_map(|e| match e {
                qcow2_format::extensions::Extension::FullDiskEncryption(f) => {
                    Some((f.offset.get() as usize, f.length.get() as usize))
                }
                _ => None,
            })
        });
    if let Some((at, len)) = range {
        let end = at.saturating_add(len).min(bytes.len());
        if at < end {
            bytes[at..end].fill(0);
        }
    }
    bytes
}

/// `bytes` with the creation date (bytes 16-23) of every snapshot table
/// entry set to zero.
fn blank_snapshot_dates(mut bytes: Vec<u8>) -> Vec<u8> {
    let Ok(area) = qcow2_format::HeaderArea::parse(&bytes) else {
        return bytes;
    };
    let be = |b: &[u8], at: usize, n: usize| -> Option<usize> {
        let mut v = 0usize;
        for &x in b.get(at..at + n)? {
            v = (v << 8) | usize::from(x);
        }
        Some(v)
    };
    let mut at = area.header.snapshots_offset.get() as usize;
    for _ in 0..area.header.nb_snapshots.min(64) {
        let (Some(id), Some(name), Some(extra)) = (
            be(&bytes, at + 12, 2),
            be(&bytes, at + 14, 2),
            be(&bytes, at + 36, 4),
        ) else {
            break;
        };
        if let Some(date) = bytes.get_mut(at + 16..at + 24) {
            date.fill(0);
        }
        at += (40 + extra + id + name).div_ceil(8) * 8;
    }
    bytes
}

/// The qemu-img version line the README of the qemu goldens records.
fn recorded_version(dir: &Path) -> Result<String, String> {
    let path = dir.join("README.md");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.split('`')
        .find(|part| part.starts_with("qemu-img version"))
        .map(str::to_string)
        .ok_or_else(|| format!("{}: no qemu-img version recorded", path.display()))
}

/// Runs `qemu-img ARGS` in `dir`, returning stdout or an error carrying stderr.
fn qemu_img(dir: &Path, args: &[String]) -> Result<String, String> {
    run_tool(dir, "qemu-img", args)
}

/// Runs `TOOL ARGS` in `dir`, returning stdout or an error carrying stderr.
fn run_tool(dir: &Path, tool: &str, args: &[String]) -> Result<String, String> {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("running {tool} (is it installed?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The installed versions of the codec libraries qemu-img links.
fn codec_versions() -> Result<Value, String> {
    let mut versions = serde_json::Map::new();
    for package in CODEC_PACKAGES {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", package])
            .output()
            .map_err(|e| format!("dpkg-query (to record codec versions): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "dpkg-query -W {package} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        versions.insert(package.to_string(), Value::String(version));
    }
    Ok(Value::Object(versions))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// What the manifest says of one file: its name under `key` ("file" marks
/// the images, "name" the companions), SHA-256 and length.
fn file_record(work: &Path, file: &str, key: &str) -> Result<Value, String> {
    let bytes = read(&work.join(file))?;
    let mut record = json!({ "sha256": sha256_hex(&bytes), "bytes": bytes.len() });
    record[key] = json!(file);
    Ok(record)
}

/// The manifest: versions, then one object per image in catalogue order.
fn manifest(work: &Path, golden: &[Golden], version: &str) -> Result<String, String> {
    let mut images = Vec::with_capacity(golden.len());
    for g in golden {
        let bytes = read(&work.join(g.file()))?;
        // The size as the header records it (bytes 24..32): qemu-img rounds
        // sizes up and overlays inherit theirs.
        let virtual_size = bytes
            .get(24..32)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| format!("{} is too short for a qcow2 header", g.file()))?;
        let companions = g
            .companions
            .iter()
            .map(|c| file_record(work, c, "name"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut entry = file_record(work, &g.file(), "file")?;
        entry["name"] = json!(g.name);
        entry["qemu_img_args"] = json!(g.create);
        entry["virtual_size"] = json!(virtual_size);
        entry["pre_qemu_img_args"] = json!(g.pre);
        entry["post_qemu_img_args"] = json!(g.post);
        entry["companion_files"] = json!(companions);
        images.push(entry);
    }
    let manifest = json!({
        "qemu_img_version": version,
        "codec_libraries": codec_versions()?,
        "stored_as": "FILE.hex holds FILE as sparse hex (conformance/src/sparse_hex.rs)",
        "images": images,
    });
    serde_json::to_string_pretty(&manifest)
        .map(|t| t + "\n")
        .map_err(|e| e.to_string())
}

fn readme(version: &str) -> String {
    format!(
        "# Golden images made by qemu-img\n\n\
         Generated by `cargo xtask golden` with `{version}`; do not edit by hand.\n\
         `cargo xtask golden --check` regenerates them into `target/golden-check` and\n\
         compares every stored file.\n\n\
         Each image (and each backing or data file it names) is stored as\n\
         `FILE.hex`, a sparse hex text of the file: a qcow2 image is mostly zero\n\
         bytes, so the text is a small fraction of it. The tests write the real\n\
         files out under `target/` (`conformance/src/sparse_hex.rs`, `materialize`)\n\
         and the manifest's SHA-256 of each file says what they must be.\n\n\
         `manifest.json` records the qemu-img version, the versions of the codec\n\
         libraries it links (`codec_libraries`) and every image. For each one, run\n\
         from one directory: each command of `pre_qemu_img_args`, then `qemu-img`\n\
         with `qemu_img_args`, then each command of `post_qemu_img_args` (a command\n\
         whose first word is `qemu-io` runs qemu-io). `virtual_size` is the size the\n\
         header records. `companion_files` are the other files the image names\n\
         (backing files, external data files); they are named relatively, so the\n\
         directory can move as a whole.\n"
    )
}
