//! Helpers of the engine-command tests: running `qcow2`, `qemu-img` and
//! `qemu-io`, a deterministic PRNG, and reading an image's guest bytes
//! through QEMU.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn run(program: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} is required for these tests: {e}"))
}

/// Runs our binary in `dir`.
pub fn qcow2(dir: &Path, args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_qcow2"), dir, args)
}

/// Runs `qemu-img` in `dir`.
pub fn qemu_img(dir: &Path, args: &[&str]) -> Output {
    run("qemu-img", dir, args)
}

/// Runs `qemu-io` in `dir`.
pub fn qemu_io(dir: &Path, args: &[&str]) -> Output {
    run("qemu-io", dir, args)
}

/// Stdout of a run that must succeed.
/// Runs `commands` on `file` in one `qcow2 io` (`ours`) or `qemu-io`
/// process, which must succeed; returns the tool's name and its stdout.
pub fn io_batch(dir: &Path, file: &str, commands: &[String], ours: bool) -> (&'static str, String) {
    let mut args = Vec::new();
    if ours {
        args.push("io");
    }
    for c in commands {
        args.extend(["-c", c.as_str()]);
    }
    args.push(file);
    let (who, out) = if ours {
        ("qcow2 io", qcow2(dir, &args))
    } else {
        ("qemu-io", qemu_io(dir, &args))
    };
    (who, ok(&format!("{who} {commands:?}"), &out))
}

pub fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts `qemu-img check` finds no errors and no leaks (exit status 0).
pub fn assert_clean(dir: &Path, file: &str) {
    let out = qemu_img(dir, &["check", file]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "qemu-img check {file}:\n{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img info --output=json`.
pub fn info(dir: &Path, file: &str) -> Value {
    let text = ok(
        "qemu-img info",
        &qemu_img(dir, &["info", "--output=json", file]),
    );
    serde_json::from_str(&text).expect("qemu-img info prints JSON")
}

/// The guest disk of `file` as QEMU reads it (`qemu-img convert -O raw`).
pub fn qemu_raw(dir: &Path, file: &str) -> Vec<u8> {
    let raw = format!("{file}.qemu-raw");
    ok(
        "qemu-img convert",
        &qemu_img(dir, &["convert", "-O", "raw", file, &raw]),
    );
    let bytes = std::fs::read(dir.join(&raw)).expect("read converted image");
    std::fs::remove_file(dir.join(&raw)).expect("remove converted image");
    bytes
}

/// First offset where two byte strings differ, for readable failures.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Asserts two disks are byte-identical, naming the first difference.
pub fn assert_same_bytes(actual: &[u8], expected: &[u8], context: &str) {
    if let Some(at) = first_difference(actual, expected) {
        panic!(
            "{context}: contents differ at byte {at} (lengths {} and {}): {:?} vs {:?}",
            actual.len(),
            expected.len(),
            actual.get(at),
            expected.get(at)
        );
    }
}

/// xorshift64*: a small deterministic PRNG for offsets and lengths.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
