//! Every negative case of the conformance suite through the command line:
//! the consequence in docs/spec.md's Violation column is what `qcow2` does
//! with the image (refused by `info` naming the rule; opened read-only and a
//! write refused naming it; reported by `check` with the rule and a failing
//! exit code; fixed by `check -r all`, after which our check and `qemu-img
//! check` are clean; kept across `resize`, `amend` and `check -r all`).

mod common;
mod tools;

use std::path::Path;
use std::process::Output;

use qcow2_conformance::consequence::{compare_kept, Consequence};
use qcow2_conformance::negatives::{self, CaseInput};
use qcow2_format::HeaderArea;

/// The directory and bare name of `file`, to run a tool there.
fn split(file: &Path) -> (&Path, &str) {
    let dir = file.parent().expect("file directory");
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    (dir, name)
}

/// `qcow2 ARGS FILE`, in the file's directory.
fn qcow2(args: &[&str], file: &Path) -> Output {
    let (dir, name) = split(file);
    tools::qcow2(dir, &[args, &[name]].concat())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether our `check` exit code is at least as severe as qemu-img's
/// (0 clean, 1 not completed, 2 corruptions, 3 leaks only): never clean
/// where qemu-img finds something, never leaks only where it finds
/// corruption. Images with a seed extension are compared with nothing:
/// qemu-img does not know the clusters those name.
fn as_severe(ours: Option<i32>, qemu: Option<i32>, bytes: &[u8]) -> bool {
    let seed = seed_image(bytes);
    match (ours, qemu) {
        _ if seed => matches!(ours, Some(0..=3)),
        (Some(0), Some(2 | 3)) | (Some(3), Some(2)) => false,
        (Some(0..=3), _) => true,
        _ => false,
    }
}

/// Whether the image carries a seed extension.
fn seed_image(bytes: &[u8]) -> bool {
    HeaderArea::parse(bytes).is_ok_and(|a| a.dedup().is_some() || a.compress_format().is_some())
}

/// Writes the golden data file a case image names next to it, so that
/// qemu-img can open the image.
fn write_data_file(dir: &Path, bytes: &[u8]) {
    let Some(name) = HeaderArea::parse(bytes)
        .ok()
        .and_then(|a| a.data_file().map(str::to_string))
    else {
        return;
    };
    let stored = qcow2_conformance::corpus::golden_dir().join(format!("{name}.hex"));
    if let Ok(text) = std::fs::read_to_string(stored) {
        let data = qcow2_conformance::sparse_hex::parse(&text).expect("stored data file");
        std::fs::write(dir.join(name), data).unwrap();
    }
}

/// `qemu-img check` of `name` in `dir` (with its key when encrypted).
fn qemu_check(dir: &Path, name: &str) -> Output {
    let args = common::qemu_file_args(dir, name);
    let mut all = vec!["check"];
    all.extend(args.iter().map(String::as_str));
    tools::qemu_img(dir, &all)
}

/// What the CLI did with a case, or why that is not the consequence.
fn observe(file: &Path, bytes: &[u8], rule: &str, expected: Consequence) -> Result<(), String> {
    match expected {
        Consequence::Refuse => {
            let out = qcow2(&["info"], file);
            if out.status.success() || !text(&out).contains(rule) {
                return Err(format!("info: {:?} {}", out.status.code(), text(&out)));
            }
        }
        Consequence::ReadOnly => {
            let info = qcow2(&["info"], file);
            if !info.status.success() {
                return Err(format!("info refused: {}", text(&info)));
            }
            let out = qcow2(&["io", "-c", "write 0 512"], file);
            if out.status.success() || !text(&out).contains(rule) {
                return Err(format!("io write: {:?} {}", out.status.code(), text(&out)));
            }
        }
        Consequence::Repair => {
            observe(file, bytes, rule, Consequence::Check)?;
            let out = qcow2(&["check", "-r", "all"], file);
            let (dir, name) = split(file);
            let qemu = qemu_check(dir, name);
            let ours = qcow2(&["check"], file);
            // qemu-img counts the clusters of the seed extensions as leaks.
            let qemu_clean = qemu.status.success() || seed_image(bytes);
            if !out.status.success() || !ours.status.success() || !qemu_clean {
                return Err(format!(
                    "check -r all: {:?} {}; then check: {}; qemu-img check: {}",
                    out.status.code(),
                    text(&out),
                    text(&ours),
                    text(&qemu)
                ));
            }
        }
        Consequence::Check => {
            let out = qcow2(&["check"], file);
            let code = out.status.code();
            let (dir, name) = split(file);
            let qemu = qemu_check(dir, name);
            let qemu_code = qemu.status.code();
            if !text(&out).contains(rule) || !as_severe(code, qemu_code, bytes) {
                return Err(format!(
                    "check: {code:?} (qemu-img {qemu_code:?}: {}) {}",
                    text(&qemu).trim(),
                    text(&out)
                ));
            }
        }
        Consequence::Duty => {
            return Err(format!(
                "{rule} is a duty rule: its cases are conformance/src/duties, not negatives"
            ))
        }
        Consequence::IgnoreKeep => {
            let area = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
            let grown = area.header.size + (1u64 << area.header.cluster_bits);
            let (dir, name) = split(file);
            let out = tools::qcow2(dir, &["resize", name, &grown.to_string()]);
            if !out.status.success() {
                return Err(format!("resize: {}", text(&out)));
            }
            let after = std::fs::read(file).map_err(|e| e.to_string())?;
            compare_kept(bytes, &after, grown)?;
            let width = if area.header.refcount_bits() == 32 {
                "16"
            } else {
                "32"
            };
            let option = format!("refcount_bits={width}");
            for rewrite in [
                &["amend", "-o", option.as_str(), name][..],
                &["check", "-r", "all", name],
            ] {
                let out = tools::qcow2(dir, rewrite);
                if !out.status.success() {
                    return Err(format!("{rewrite:?}: {}", text(&out)));
                }
                let after = std::fs::read(file).map_err(|e| e.to_string())?;
                compare_kept(bytes, &after, grown).map_err(|e| format!("{rewrite:?}: {e}"))?;
            }
        }
    }
    Ok(())
}

#[test]
fn every_negative_case_has_its_consequence_through_the_cli() {
    let images = qcow2_conformance::corpus::load().expect("corpus");
    let violations = qcow2_conformance::spec_doc::load_violations().expect("docs/spec.md");
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (n, case) in negatives::all().iter().enumerate() {
        let rule = case.rule.as_str();
        let Ok(CaseInput::Bytes(bytes)) = (case.build)(&images) else {
            continue;
        };
        let expected = violations
            .get(rule)
            .and_then(|c| Consequence::from_cell(c))
            .unwrap_or_else(|| panic!("{rule}: no consequence in docs/spec.md"));
        let file = dir.path().join(format!("case-{n}.qcow2"));
        std::fs::write(&file, &bytes).unwrap();
        write_data_file(dir.path(), &bytes);
        checked += 1;
        if let Err(why) = observe(&file, &bytes, rule, expected) {
            failures.push(format!("{rule} {:?} ({expected:?}): {why}", case.name));
        }
    }
    assert!(checked >= 80, "only {checked} cases");
    assert!(
        failures.is_empty(),
        "{} of {checked} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The read duties (READ-MAPPING, READ-UNALLOCATED) through the command
/// line: `qcow2 convert -O raw` of each golden the duty cases read gives
/// the guest disk its recorded qemu-io commands describe, the backing file
/// of chain-top found next to it.
#[test]
fn the_read_duties_hold_through_qcow2_convert() {
    use qcow2_conformance::duties::guest_model::{guest_disk, Until};
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("read-duties");
    qcow2_conformance::corpus::materialize_golden(&dir).expect("goldens");
    let names = [
        "data-v2",
        "data-v3",
        "data-extended-l2",
        "data-512",
        "compressed-zlib",
        "compressed-zstd",
        "snapshot",
        "chain-base",
        "chain-top",
    ];
    for name in names {
        let raw = format!("{name}.raw");
        let out = tools::qcow2(
            &dir,
            &["convert", "-O", "raw", &format!("{name}.qcow2"), &raw],
        );
        assert!(out.status.success(), "{name}: {}", text(&out));
        let got = std::fs::read(dir.join(&raw)).unwrap();
        let want = guest_disk(name, Until::End).unwrap();
        assert_eq!(got.len(), want.len(), "{name}: length");
        let at = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(
            at, None,
            "{name}: converted disk differs from the recorded writes"
        );
    }
}
