//! Positive cases: the golden images on disk, the seed images built in code
//! and the hand-written fixtures.

use std::path::{Path, PathBuf};

use crate::seed_images;

/// Where an image came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Made by `qemu-img` (`cargo xtask golden`).
    Qemu,
    /// Built byte by byte by this crate (seed extensions).
    Built,
    /// Written by this workspace's own writer (`qcow2-image`).
    Writer,
    /// Written by hand as hex from the spec and seed text (`conformance/fixtures/`).
    Fixture,
    /// A golden patched into a form the spec tells readers to tolerate but
    /// our serializer never writes (`conformance/src/tolerated.rs`): not
    /// expected to re-serialize byte for byte.
    Tolerated,
}

/// One named image held in memory.
#[derive(Clone, Debug)]
pub struct TestImage {
    /// Stable name used in reports.
    pub name: String,
    /// Who made it.
    pub origin: Origin,
    /// The whole file.
    pub bytes: Vec<u8>,
    /// How it was made, precisely enough to make it again: the commands,
    /// or the code that builds it and from what.
    pub made_by: String,
    /// Where it is kept, relative to the repository root (`None`: built
    /// at run time, not stored).
    pub path: Option<String>,
}

impl TestImage {
    /// The SHA-256 of the whole file, in hex.
    pub fn sha256(&self) -> String {
        sha256_hex(&self.bytes)
    }
}

/// The SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The shell form of a manifest command list (`["create", "-f", ...]`).
fn command_line(tool: &str, args: &serde_json::Value) -> String {
    let words: Vec<&str> = args
        .as_array()
        .map(|a| a.iter().filter_map(|w| w.as_str()).collect())
        .unwrap_or_default();
    match words.split_first() {
        // The manifest marks qemu-io commands by their first word.
        Some((&"qemu-io", rest)) => format!("qemu-io {}", rest.join(" ")),
        _ => format!("{tool} {}", words.join(" ")),
    }
}

/// Every command of a manifest entry, in the order they run.
fn commands_of(entry: &serde_json::Value) -> String {
    let list = |key: &str| -> Vec<String> {
        entry[key]
            .as_array()
            .map(|cmds| cmds.iter().map(|c| command_line("qemu-img", c)).collect())
            .unwrap_or_default()
    };
    let mut all = list("pre_qemu_img_args");
    all.push(command_line("qemu-img", &entry["qemu_img_args"]));
    all.extend(list("post_qemu_img_args"));
    all.join("; ")
}

/// The directory holding `manifest.json` and the qemu-made golden images.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join("qemu")
}

/// Loads every image listed in the golden manifest.
pub fn load_golden(dir: &Path) -> Result<Vec<TestImage>, String> {
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        format!(
            "cannot read {}: {e} (run `cargo xtask golden`)",
            manifest_path.display()
        )
    })?;
    let manifest: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let entries = manifest["images"]
        .as_array()
        .ok_or_else(|| format!("{}: no \"images\" list", manifest_path.display()))?;
    entries
        .iter()
        .map(|entry| {
            let file = entry["file"].as_str().ok_or_else(|| {
                format!(
                    "{}: entry without \"file\": {entry}",
                    manifest_path.display()
                )
            })?;
            let name = entry["name"].as_str().unwrap_or(file).to_string();
            let bytes = read_stored(dir, file, entry["sha256"].as_str())?;
            Ok(TestImage {
                name,
                origin: Origin::Qemu,
                bytes,
                made_by: commands_of(entry),
                path: Some(format!("conformance/golden/qemu/{file}.hex")),
            })
        })
        .collect()
}

/// The bytes of the golden `file`, from its sparse hex form in `dir`,
/// checked against the SHA-256 the manifest records.
fn read_stored(dir: &Path, file: &str, sha256: Option<&str>) -> Result<Vec<u8>, String> {
    let path = dir.join(format!("{file}.hex"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let bytes = crate::sparse_hex::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    match sha256 {
        Some(want) if sha256_hex(&bytes) == want => Ok(bytes),
        Some(want) => Err(format!(
            "{} does not hash to the manifest's SHA-256 {want}",
            path.display()
        )),
        None => Err(format!("the manifest records no SHA-256 for {file}")),
    }
}

/// Writes the qemu goldens (images and the files they name) out in full
/// under `dst`, with the manifest, and returns `dst`: for tools that need
/// real files, such as `qemu-img` and the `qcow2` CLI.
pub fn materialize_golden(dst: &Path) -> Result<PathBuf, String> {
    crate::sparse_hex::materialize(&golden_dir(), dst)?;
    Ok(dst.to_path_buf())
}

/// The whole positive corpus: golden images plus seed images derived from them.
pub fn load() -> Result<Vec<TestImage>, String> {
    let mut images = load_golden(&golden_dir())?;
    let built = seed_images::build_all(&images)?;
    let tolerated = crate::tolerated::build_all(&images)?;
    images.extend(built);
    images.extend(tolerated);
    images.extend(crate::fixtures::images()?);
    Ok(images)
}

/// The image called `name`.
pub fn find<'a>(images: &'a [TestImage], name: &str) -> Result<&'a TestImage, String> {
    images
        .iter()
        .find(|i| i.name == name)
        .ok_or_else(|| format!("no image named {name:?} in the corpus"))
}
