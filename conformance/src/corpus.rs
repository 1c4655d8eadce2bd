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
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
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
            let path = dir.join(file);
            let bytes =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Ok(TestImage {
                name,
                origin: Origin::Qemu,
                bytes,
            })
        })
        .collect()
}

/// The whole positive corpus: golden images plus seed images derived from them.
pub fn load() -> Result<Vec<TestImage>, String> {
    let mut images = load_golden(&golden_dir())?;
    let built = seed_images::build_all(&images)?;
    images.extend(built);
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
