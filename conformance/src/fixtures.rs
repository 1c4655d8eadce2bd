//! Hand-written hex fixtures (`conformance/fixtures/`): bytes composed from
//! the spec and seed text alone, so a mistake that our serializer and parser
//! share (say, two fields swapped) cannot pass unseen.
//!
//! The text format is [`crate::sparse_hex`].

use std::path::{Path, PathBuf};

use crate::corpus::{Origin, TestImage};

/// The directory of the fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every fixture of `conformance/fixtures/<kind>/`, by file stem, sorted.
pub fn load(kind: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let dir = fixtures_dir().join(kind);
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hex"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let bytes =
                crate::sparse_hex::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?;
            let stem = p.file_stem().unwrap_or_default().to_string_lossy();
            Ok((stem.into_owned(), bytes))
        })
        .collect()
}

/// The whole-image fixtures, as positive cases of the corpus.
pub fn images() -> Result<Vec<TestImage>, String> {
    Ok(load("dedup")?
        .into_iter()
        .map(|(name, bytes)| TestImage {
            name: format!("fixture-{name}"),
            origin: Origin::Fixture,
            bytes,
            made_by: "written by hand as hex from qcow2.txt and the seed text".into(),
            path: Some(format!("conformance/fixtures/dedup/{name}.hex")),
        })
        .collect())
}
