//! Helpers shared by the engine's interop tests: running qemu-img/qemu-io
//! and a small deterministic PRNG.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Runs a command and returns stdout; panics with its stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img check --output=json`, asserting no corruption and no leak.
pub fn assert_qemu_check_clean(path: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(path)
        .output()
        .expect("run qemu-img check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img check {} exit {}: {text}\n{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&text).expect("check json");
    for key in ["corruptions", "leaks", "check-errors"] {
        let v = json.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        assert_eq!(
            v,
            0,
            "{key} in qemu-img check of {}: {text}",
            path.display()
        );
    }
}

/// `qemu-io -c "read -P pattern offset len"` must succeed and verify.
pub fn assert_qemu_reads_pattern(path: &Path, offset: u64, len: u64, pattern: u8) {
    let cmd = format!("read -P {pattern} {offset} {len}");
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-r", "-c", &cmd])
        .arg(path)
        .output()
        .expect("run qemu-io");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("verification failed") && text.contains("read "),
        "qemu-io {cmd} on {}: {text}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// xorshift64*: deterministic test randomness.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
