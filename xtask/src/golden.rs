//! `cargo xtask golden [--check]`: the qcow2 images made by the real `qemu-img`.
//!
//! Every image is described by the exact `qemu-img` command lines that make it,
//! run from `conformance/golden/qemu/` with relative names so the directory can
//! move. `qemu-img create` is deterministic, so regenerating gives the same
//! bytes; `--check` regenerates into a scratch directory and compares, which
//! catches both hand edits and a `qemu-img` that writes differently.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use qcow2_conformance::engine_images;

/// Where the images live, relative to the workspace root.
const GOLDEN_DIR: &str = "conformance/golden/qemu";
/// Extensions of the files this generator owns in [`GOLDEN_DIR`].
const GENERATED_EXTENSIONS: &[&str] = &["qcow2", "raw", "data"];

/// One golden image and the commands that make it.
struct Golden {
    /// Stable name; the file is `<name>.qcow2`.
    name: String,
    /// Commands run before the create (for example a raw backing file).
    pre: Vec<Vec<String>>,
    /// The `qemu-img create` command.
    create: Vec<String>,
    /// Commands run after the create (for example `qemu-img bitmap --add`).
    post: Vec<Vec<String>>,
    /// Other files in the directory the image refers to (backing, data file).
    companions: Vec<&'static str>,
}

impl Golden {
    fn file(&self) -> String {
        format!("{}.qcow2", self.name)
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
fn catalogue() -> Vec<Golden> {
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
        for w in writes {
            g.post
                .push(strings(&[QEMU_IO, "-f", "qcow2", "-c", w, &g.file()]));
        }
        all.push(g);
    }
    all
}

/// A command whose first word is this runs `qemu-io` instead of `qemu-img`.
const QEMU_IO: &str = "qemu-io";

/// Runs the subcommand.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let root = workspace_root();
    match args {
        [] => {
            let dir = root.join(GOLDEN_DIR);
            generate(&dir)?;
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
        _ => Err("usage: cargo xtask golden [--check | --writer]".to_string()),
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

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Regenerates every image, companion file, the manifest and the README in `dir`.
fn generate(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let version = qemu_img(dir, &strings(&["--version"]))?;
    let version = version.lines().next().unwrap_or_default().to_string();
    remove_generated(dir)?;
    let golden = catalogue();
    let mut sizes = Vec::with_capacity(golden.len());
    for g in &golden {
        for cmd in g.pre.iter().chain([&g.create]).chain(&g.post) {
            match cmd.split_first() {
                Some((tool, rest)) if tool == QEMU_IO => run_tool(dir, QEMU_IO, rest)?,
                _ => qemu_img(dir, cmd)?,
            };
        }
        sizes.push(virtual_size(&dir.join(g.file()))?);
    }
    write(&dir.join("manifest.json"), &manifest(&golden, &sizes))?;
    write(&dir.join("README.md"), &readme(&version))
}

/// Deletes the files a previous run made, so renamed or dropped images do not linger.
fn remove_generated(dir: &Path) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        let owned = GENERATED_EXTENSIONS.contains(&ext)
            || path.file_name().is_some_and(|n| n == "manifest.json");
        if owned && path.is_file() {
            fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Regenerates into a scratch directory and compares every file byte for byte.
fn check(root: &Path) -> Result<(), String> {
    let golden_dir = root.join(GOLDEN_DIR);
    let stale = engine_images::stale_golden(&engine_images::golden_writer_dir())?;
    if !stale.is_empty() {
        return Err(format!(
            "images of our writer differ from a fresh build (run `cargo xtask golden --writer`): {}",
            stale.join(", ")
        ));
    }
    let recorded = recorded_version(&golden_dir)?;
    let local = qemu_img(root, &strings(&["--version"]))?;
    let local = local.lines().next().unwrap_or_default().to_string();
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
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(|e| format!("clearing {}: {e}", scratch.display()))?;
    }
    generate(&scratch)?;
    let mut names: Vec<String> = catalogue()
        .iter()
        .flat_map(|g| std::iter::once(g.file()).chain(g.companions.iter().map(|c| c.to_string())))
        .collect();
    names.push("manifest.json".to_string());
    names.sort();
    names.dedup();
    let differing: Vec<&String> = names
        .iter()
        .filter(|n| fs::read(golden_dir.join(n)).ok() != fs::read(scratch.join(n)).ok())
        .collect();
    if differing.is_empty() {
        println!("golden: {} files match a fresh regeneration", names.len());
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

/// The virtual size as recorded in the header (bytes 24..32), so the manifest states what
/// `qemu-img` actually wrote (it rounds sizes up and overlays inherit theirs).
fn virtual_size(path: &Path) -> Result<u64, String> {
    let bytes = fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let field: [u8; 8] = bytes
        .get(24..32)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| format!("{} is too short for a qcow2 header", path.display()))?;
    Ok(u64::from_be_bytes(field))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The manifest: one object per image, in catalogue order, pretty-printed for diffs.
fn manifest(golden: &[Golden], sizes: &[u64]) -> String {
    let mut out = String::from("[\n");
    for (i, (g, size)) in golden.iter().zip(sizes).enumerate() {
        let companions: Vec<String> = g.companions.iter().map(|c| c.to_string()).collect();
        let _ = write!(
            out,
            "  {{\n    \"name\": {},\n    \"file\": {},\n    \"qemu_img_args\": {},\n    \"virtual_size\": {size},\n    \
             \"pre_qemu_img_args\": {},\n    \"post_qemu_img_args\": {},\n    \"companion_files\": {}\n  }}",
            json_string(&g.name),
            json_string(&g.file()),
            json_strings(&g.create),
            json_commands(&g.pre),
            json_commands(&g.post),
            json_strings(&companions),
        );
        out.push_str(if i + 1 == golden.len() { "\n" } else { ",\n" });
    }
    out.push_str("]\n");
    out
}

fn json_commands(cmds: &[Vec<String>]) -> String {
    format!(
        "[{}]",
        cmds.iter()
            .map(|c| json_strings(c))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn json_strings(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| json_string(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A JSON string literal (xtask stays dependency-free, so no serde here).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn readme(version: &str) -> String {
    format!(
        "# Golden images made by qemu-img\n\n\
         Generated by `cargo xtask golden` with `{version}`; do not edit by hand.\n\
         `cargo xtask golden --check` regenerates them into `target/golden-check` and\n\
         compares byte for byte.\n\n\
         `manifest.json` lists every image. For each one, run from this directory:\n\
         each command of `pre_qemu_img_args`, then `qemu-img` with `qemu_img_args`,\n\
         then each command of `post_qemu_img_args`. `virtual_size` is the size the\n\
         header records. `companion_files` are the other files in this directory the\n\
         image names (backing files, external data files); they are named\n\
         relatively, so the directory can move as a whole.\n"
    )
}
