//! Sparse hex: a text form of mostly-zero files, used for the hand-written
//! fixtures and for storing the golden images (a qcow2 image is mostly zero
//! bytes, so the text is a small fraction of the file and diffs well).
//!
//! One directive per line, `#` starting a comment:
//! - hex digits in groups of whole bytes (`c03183a3 0000`): bytes at the cursor;
//! - `@0x1f0`: move the cursor;
//! - `fill N HH`: N bytes of HH at the cursor;
//! - `size N`: the file is N bytes (zeros after the last byte written).
//!
//! Bytes no line writes are zero; a byte written twice is an error.
//!
//! This file uses std only, so that test crates which do not depend on
//! the conformance crate can include it with `#[path]`.

use std::path::Path;

/// Largest file [`parse`] builds.
pub const MAX_LEN: usize = 64 << 20;

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
    if word.len() % 2 != 0 || !word.is_ascii() {
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

/// The bytes being built, with which of them a line has written.
#[derive(Default)]
struct Canvas {
    bytes: Vec<u8>,
    written: Vec<bool>,
}

impl Canvas {
    fn put(&mut self, at: usize, data: &[u8], line: usize) -> Result<(), String> {
        let end = at
            .checked_add(data.len())
            .filter(|&e| e <= MAX_LEN)
            .ok_or_else(|| format!("line {line}: past {MAX_LEN} bytes"))?;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
            self.written.resize(end, false);
        }
        if let Some(k) = self.written[at..end].iter().position(|&w| w) {
            return Err(format!("line {line}: byte {:#x} written twice", at + k));
        }
        self.bytes[at..end].copy_from_slice(data);
        self.written[at..end].fill(true);
        Ok(())
    }
}

/// Builds the bytes a sparse hex text describes.
pub fn parse(text: &str) -> Result<Vec<u8>, String> {
    let mut canvas = Canvas::default();
    let mut cursor = 0usize;
    let mut size = None;
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
                let [b] = hex_bytes(byte, line)?[..] else {
                    return Err(format!("line {line}: fill takes one byte"));
                };
                canvas.put(cursor, &vec![b; n], line)?;
                cursor += n;
            }
            groups => {
                for g in groups {
                    let bytes = hex_bytes(g, line)?;
                    canvas.put(cursor, &bytes, line)?;
                    cursor += bytes.len();
                }
            }
        }
    }
    let mut out = canvas.bytes;
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

/// Bytes per hex line of [`dump`].
const LINE: usize = 32;
/// A run of one non-zero byte at least this long becomes a `fill`.
const MIN_FILL: usize = 64;
/// A run of zeros at least this long ends a hex line and is skipped.
const MIN_GAP: usize = 16;

fn run_len(bytes: &[u8], at: usize) -> usize {
    bytes[at..].iter().take_while(|&&b| b == bytes[at]).count()
}

/// The sparse hex text of `bytes`, under the comment lines `header`;
/// [`parse`] of it gives `bytes` back.
pub fn dump(bytes: &[u8], header: &[String]) -> String {
    let mut out: String = header.iter().map(|h| format!("# {h}\n")).collect();
    out.push_str(&format!("size {}\n", bytes.len()));
    let mut cursor = 0;
    let mut at = 0;
    while at < bytes.len() {
        let run = run_len(bytes, at);
        if bytes[at] == 0 {
            at += run;
            continue;
        }
        if at != cursor {
            out.push_str(&format!("@{at:#x}\n"));
        }
        if run >= MIN_FILL {
            out.push_str(&format!("fill {run} {:02x}\n", bytes[at]));
            at += run;
        } else {
            let mut end = at;
            while end < bytes.len() && end - at < LINE {
                let r = run_len(bytes, end);
                let stop = (bytes[end] == 0 && r >= MIN_GAP) || (bytes[end] != 0 && r >= MIN_FILL);
                if stop && end > at {
                    break;
                }
                end += 1;
            }
            let words: Vec<String> = bytes[at..end]
                .chunks(4)
                .map(|w| w.iter().map(|b| format!("{b:02x}")).collect())
                .collect();
            out.push_str(&words.join(" "));
            out.push('\n');
            at = end;
        }
        cursor = at;
    }
    out
}

/// Writes the file each `NAME.hex` of `src` describes as `dst/NAME`, and
/// copies every other file; returns how many files `dst` holds from `src`.
pub fn materialize(src: &Path, dst: &Path) -> Result<usize, String> {
    std::fs::create_dir_all(dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    let entries = std::fs::read_dir(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut count = 0;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if !path.is_file() {
            continue;
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let (target, bytes) = match name.strip_suffix(".hex") {
            Some(stem) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let bytes = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                (dst.join(stem), bytes)
            }
            None => (
                dst.join(&*name),
                std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?,
            ),
        };
        // Another test process may be doing the same: write aside, then
        // rename, so nobody reads a half-written image.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = target.with_extension(format!("tmp{}-{n}", std::process::id()));
        write_sparse(&tmp, &bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &target).map_err(|e| format!("{}: {e}", target.display()))?;
        count += 1;
    }
    Ok(count)
}

/// Writes `bytes` leaving every all-zero 4 KiB block a hole, as the tools
/// that made the images left them: what a raw file's block status says
/// (`qemu-img map`) then does not depend on how the file was copied.
fn write_sparse(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    const BLOCK: usize = 4096;
    let mut file = std::fs::File::create(path)?;
    for (k, block) in bytes.chunks(BLOCK).enumerate() {
        if block.iter().any(|&b| b != 0) {
            file.seek(SeekFrom::Start((k * BLOCK) as u64))?;
            file.write_all(block)?;
        }
    }
    // No fsync: the rename only has to be atomic for readers on this machine.
    file.set_len(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::{dump, parse};

    #[test]
    fn directives_place_bytes_and_bad_lines_are_refused() {
        let bytes = parse("# c\nab cd\n@0x4\nfill 2 ff\nsize 8\n").unwrap();
        assert_eq!(bytes, [0xab, 0xcd, 0, 0, 0xff, 0xff, 0, 0]);
        assert!(parse("abcd\n@0x1\nee\n").unwrap_err().contains("twice"));
        assert!(parse("abc\n").unwrap_err().contains("whole bytes"));
        assert!(parse("zz\n").unwrap_err().contains("not hex"));
        assert!(parse("abcd\nsize 1\n").unwrap_err().contains("less than"));
        assert!(parse("@0x7fffffffffff\n00\n").is_err());
        assert!(parse("fill 2 abcd\n").unwrap_err().contains("one byte"));
    }

    #[test]
    fn dump_then_parse_gives_the_bytes_back() {
        let mut bytes = vec![0u8; 70_000];
        bytes[0..4].copy_from_slice(&[0x51, 0x46, 0x49, 0xfb]);
        bytes[100..300].fill(0x5a);
        for (i, b) in bytes[1000..1100].iter_mut().enumerate() {
            *b = i as u8;
        }
        bytes[1050..1070].fill(0);
        bytes[69_999] = 1;
        let text = dump(&bytes, &["made by a test".to_string()]);
        assert!(text.starts_with("# made by a test\nsize 70000\n"), "{text}");
        assert!(text.contains("fill 200 5a"), "{text}");
        assert!(text.len() < 1000, "{} bytes of text", text.len());
        assert_eq!(parse(&text).unwrap(), bytes);
        assert_eq!(parse(&dump(&[], &[])).unwrap(), Vec::<u8>::new());
        assert_eq!(parse(&dump(&[0; 9], &[])).unwrap(), vec![0; 9]);
    }
}
