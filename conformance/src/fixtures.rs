//! Hand-written hex fixtures (`conformance/fixtures/`): bytes composed from
//! the spec and seed text alone, so a mistake that our serializer and parser
//! share (say, two fields swapped) cannot pass unseen.
//!
//! The text format, one directive per line, `#` starting a comment:
//! - hex digits in groups of whole bytes (`c03183a3 0000`): bytes at the cursor;
//! - `@0x1f0`: move the cursor;
//! - `fill N HH`: N bytes of HH at the cursor;
//! - `size N`: the file is N bytes (zeros after the last byte written).
//!
//! Bytes no line writes are zero; a byte written twice is an error.

use std::path::{Path, PathBuf};

use crate::corpus::{Origin, TestImage};

/// Largest fixture the parser builds: fixtures are small by design.
const MAX_LEN: usize = 1 << 20;

/// The directory of the fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn number(word: &str, line: usize) -> Result<usize, String> {
    let parsed = match word.strip_prefix("0x") {
        Some(hex) => usize::from_str_radix(hex, 16),
        None => word.parse(),
    };
    parsed
        .ok()
        .filter(|&n| n <= MAX_LEN)
        .ok_or_else(|| format!("line {line}: {word:?} is not a number up to {MAX_LEN}"))
}

fn hex_bytes(word: &str, line: usize) -> Result<Vec<u8>, String> {
    if word.len() % 2 != 0 {
        return Err(format!("line {line}: {word:?} is not whole bytes"));
    }
    (0..word.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&word[i..i + 2], 16)
                .map_err(|_| format!("line {line}: {word:?} is not hex"))
        })
        .collect()
}

/// Builds the bytes a fixture text describes.
pub fn parse(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut written: Vec<bool> = Vec::new();
    let mut cursor = 0usize;
    let mut size = None;
    let mut put = |at: usize, bytes: &[u8], line: usize| -> Result<(), String> {
        let end = at + bytes.len();
        if end > MAX_LEN {
            return Err(format!("line {line}: past {MAX_LEN} bytes"));
        }
        if out.len() < end {
            out.resize(end, 0);
            written.resize(end, false);
        }
        if let Some(k) = written[at..end].iter().position(|&w| w) {
            return Err(format!("line {line}: byte {:#x} written twice", at + k));
        }
        out[at..end].copy_from_slice(bytes);
        written[at..end].fill(true);
        Ok(())
    };
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let content = raw.split('#').next().unwrap_or_default();
        let words: Vec<&str> = content.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            [at] if at.starts_with('@') => cursor = number(&at[1..], line)?,
            ["size", n] => size = Some(number(n, line)?),
            ["fill", n, byte] => {
                let n = number(n, line)?;
                let byte = hex_bytes(byte, line)?;
                let [b] = byte.as_slice() else {
                    return Err(format!("line {line}: fill takes one byte"));
                };
                put(cursor, &vec![*b; n], line)?;
                cursor += n;
            }
            groups => {
                for g in groups {
                    let bytes = hex_bytes(g, line)?;
                    put(cursor, &bytes, line)?;
                    cursor += bytes.len();
                }
            }
        }
    }
    if let Some(size) = size {
        if size < out.len() {
            return Err(format!(
                "size {size} is less than the {} bytes written",
                out.len()
            ));
        }
        out.resize(size, 0);
    }
    Ok(out)
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
            let bytes = parse(&text).map_err(|e| format!("{}: {e}", p.display()))?;
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

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn directives_place_bytes_and_overlaps_are_refused() {
        let bytes = parse("# c\nab cd\n@0x4\nfill 2 ff\nsize 8\n").unwrap();
        assert_eq!(bytes, [0xab, 0xcd, 0, 0, 0xff, 0xff, 0, 0]);
        assert!(parse("abcd\n@0x1\nee\n").unwrap_err().contains("twice"));
        assert!(parse("abc\n").unwrap_err().contains("whole bytes"));
        assert!(parse("zz\n").unwrap_err().contains("not hex"));
        assert!(parse("abcd\nsize 1\n").unwrap_err().contains("less than"));
        assert!(parse("@0x7fffffff\n00\n").is_err());
    }
}
