//! `cargo xtask fuzz [--seconds N]`: runs every cargo-fuzz target for N seconds (default 20).
//!
//! libFuzzer needs the nightly toolchain and cargo-fuzz (`.ci/run` installs
//! cargo-fuzz). Where either is missing the command fails and says what to
//! install: a fuzz step that did not run never passes.

use std::path::Path;
use std::process::Command;

const TARGETS: &[&str] = &[
    "header",
    "codec_zlib",
    "codec_zstd",
    "codec_brotli",
    "image_read",
];

fn available(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs the fuzz smoke.
/// The working corpus plus committed seeds (small valid images), when a
/// target has some: random bytes rarely make a qcow2 image.
fn seed_dirs(fuzz_dir: &Path, target: &str) -> Vec<String> {
    let seeds = fuzz_dir.join("seeds").join(target);
    if !seeds.is_dir() {
        return Vec::new();
    }
    let corpus = fuzz_dir.join("corpus").join(target);
    let _ = std::fs::create_dir_all(&corpus);
    vec![corpus.display().to_string(), seeds.display().to_string()]
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let seconds: u32 = match args {
        [] => 20,
        [flag, n] if flag == "--seconds" => n.parse().map_err(|e| format!("--seconds {n}: {e}"))?,
        _ => return Err("usage: cargo xtask fuzz [--seconds N]".to_string()),
    };
    if !available("cargo", &["+nightly", "--version"])
        || !available("cargo", &["fuzz", "--version"])
    {
        return Err(
            "fuzz: cannot run: needs `cargo +nightly` (rustup toolchain install \
                    nightly) and cargo-fuzz (`cargo install cargo-fuzz --locked`)"
                .to_string(),
        );
    }
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fuzz");
    for target in TARGETS {
        println!("fuzz: {target} for {seconds} s");
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .args(seed_dirs(&fuzz_dir, target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args([
                "-rss_limit_mb=2048",
                "-max_len=70000",
                "-print_final_stats=1",
            ])
            .current_dir(&fuzz_dir)
            .status()
            .map_err(|e| format!("running cargo fuzz: {e}"))?;
        if !status.success() {
            return Err(format!(
                "fuzz target {target} failed ({status}); see fuzz/artifacts/{target}/"
            ));
        }
    }
    println!(
        "fuzz: {} targets ran {seconds} s each without a crash",
        TARGETS.len()
    );
    Ok(())
}
