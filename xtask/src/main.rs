//! `cargo xtask`: project automation.
//!
//! Subcommands: `conformance [--json]`, `golden [--check]`, `fuzz [--seconds N]`, `bench codecs`,
//! `bench engine`, `bench compression`, `bench dedup`.
#![forbid(unsafe_code)]

mod bench_codecs;
mod bench_compression;
mod bench_dedup;
mod bench_engine;
mod conformance;
mod fuzz;
mod golden;
mod golden_store;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("conformance") => conformance::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("golden") => golden::run(&args[1..]),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("codecs") => bench_codecs::run(&args[2..]),
            Some("engine") => bench_engine::run(&args[2..]),
            Some("compression") => bench_compression::run(&args[2..]),
            Some("dedup") => bench_dedup::run(&args[2..]),
            // Started by `bench compression` (a release build measures).
            Some("codec-limit") => bench_compression::codec_limit::run_child(&args[2..]),
            other => Err(format!(
                "unknown bench {other:?}; available: codecs, engine, compression, dedup"
            )),
        },
        _ => Err(usage()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    "usage: cargo xtask <conformance [--json] | golden [--check] | fuzz [--seconds N] | bench codecs | bench engine | bench compression | bench dedup>".to_string()
}
