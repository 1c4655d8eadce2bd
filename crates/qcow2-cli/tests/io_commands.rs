//! `qcow2 io` writes (random offsets and lengths, partial clusters,
//! overwrites, zero writes, discards, resizes) checked against a model of
//! the guest disk: `qemu-img check` stays clean and QEMU reads our data.
//! QEMU and we also take turns writing one image. Output lines and exit
//! statuses are compared with qemu-io's.

mod tools;

use std::path::Path;

use tools::*;

/// The guest disk as it should read.
struct Model {
    bytes: Vec<u8>,
    /// Discard granularity: whole clusters (QEMU ignores smaller discards,
    /// even with extended L2, so only these have a defined result).
    unit: u64,
}

impl Model {
    /// A random command and its effect on the model.
    fn random_command(&mut self, rng: &mut Rng, cluster: u64) -> String {
        let size = self.bytes.len() as u64;
        let max_len = (cluster * 3).min(size);
        let offset = rng.below(size);
        let len = (1 + rng.below(max_len)).min(size - offset);
        match rng.below(10) {
            0..=5 => {
                let pattern = 1 + rng.below(255) as u8;
                self.bytes[offset as usize..(offset + len) as usize].fill(pattern);
                format!("write -P {pattern} {offset} {len}")
            }
            6 | 7 => {
                self.bytes[offset as usize..(offset + len) as usize].fill(0);
                let unmap = if rng.below(2) == 0 { "-u " } else { "" };
                format!("write -z {unmap}{offset} {len}")
            }
            _ => {
                // Discards of whole units read back as zeros.
                let start = offset / self.unit * self.unit;
                let units = 1 + rng.below(4);
                let end = (start + units * self.unit).min(size);
                self.bytes[start as usize..end as usize].fill(0);
                format!("discard {start} {}", end - start)
            }
        }
    }
}

fn run_batch(dir: &Path, file: &str, commands: &[String], ours: bool) {
    let (who, text) = io_batch(dir, file, commands, ours);
    let wrote = commands.iter().filter(|c| c.starts_with("write")).count();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("wrote ")).count(),
        wrote,
        "{who} prints one summary per write:\n{text}"
    );
}

fn verify(dir: &Path, file: &str, model: &Model, context: &str) {
    assert_clean(dir, file);
    assert_same_bytes(&qemu_raw(dir, file), &model.bytes, context);
}

/// Random batches of our commands on one layout, optionally alternating
/// with the same kind of batches run by qemu-io.
fn exercise(opts: &str, size: u64, seed: u64, take_turns: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        "create",
        &qemu_img(
            d,
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                opts,
                "t.qcow2",
                &size.to_string(),
            ],
        ),
    );
    let cluster = info(d, "t.qcow2")["cluster-size"].as_u64().unwrap();
    let mut model = Model {
        bytes: vec![0; size as usize],
        unit: cluster,
    };
    let mut rng = Rng::new(seed);
    for batch in 0..6 {
        let ours = !take_turns || batch % 2 == 0;
        let commands: Vec<String> = (0..12)
            .map(|_| model.random_command(&mut rng, cluster))
            .collect();
        run_batch(d, "t.qcow2", &commands, ours);
        let context = format!("{opts}, batch {batch}, ours={ours}, commands {commands:?}");
        verify(d, "t.qcow2", &model, &context);
    }
    // QEMU reads a range we wrote last.
    let last = format!("write -P 0x5e {} 3000", cluster / 2);
    run_batch(d, "t.qcow2", std::slice::from_ref(&last), true);
    ok(
        "qemu-io read -P",
        &qemu_io(
            d,
            &[
                "-c",
                &format!("read -P 0x5e {} 3000", cluster / 2),
                "t.qcow2",
            ],
        ),
    );
}

#[test]
fn random_writes_default_layout() {
    exercise("cluster_size=64k", 4 << 20, 1, false);
}

#[test]
fn random_writes_small_clusters() {
    exercise("cluster_size=512,refcount_bits=1", 1 << 20, 2, false);
    exercise("cluster_size=4k,refcount_bits=64", 2 << 20, 3, false);
}

#[test]
fn random_writes_v2_and_extended_l2() {
    exercise("compat=0.10,cluster_size=16k", 2 << 20, 4, false);
    exercise("extended_l2=on,cluster_size=64k", 4 << 20, 5, false);
}

#[test]
fn random_writes_big_clusters() {
    exercise("cluster_size=2M", 8 << 20, 6, false);
}

#[test]
fn qemu_and_we_take_turns() {
    exercise("cluster_size=4k", 2 << 20, 7, true);
    exercise("extended_l2=on,cluster_size=32k", 2 << 20, 8, true);
    exercise("compat=0.10,cluster_size=64k", 2 << 20, 9, true);
}

#[test]
fn writes_over_a_backing_file_and_resizes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        "base",
        &qemu_img(d, &["create", "-f", "qcow2", "base.qcow2", "2M"]),
    );
    ok(
        "base data",
        &qemu_io(d, &["-c", "write -P 0x42 0 2M", "base.qcow2"]),
    );
    ok(
        "top",
        &qemu_img(
            d,
            &[
                "create",
                "-f",
                "qcow2",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                "top.qcow2",
            ],
        ),
    );
    let mut model = vec![0x42u8; 2 << 20];
    let commands = [
        ("write -P 1 1000 10", 1000usize, 10usize, 1u8),
        ("write -P 2 65000 70000", 65000, 70000, 2),
        ("write -z 200000 100", 200_000, 100, 0),
        ("write -z -u 262144 65536", 262_144, 65536, 0),
        ("discard 393216 65536", 393_216, 65536, 0),
    ];
    let mut args = vec!["io"];
    for (c, off, len, byte) in commands {
        args.extend(["-c", c]);
        model[off..off + len].fill(byte);
    }
    args.push("top.qcow2");
    ok("io", &qcow2(d, &args));
    assert_clean(d, "top.qcow2");
    assert_same_bytes(&qemu_raw(d, "top.qcow2"), &model, "over backing");
    // Grow through io's truncate and resize, then shrink.
    ok(
        "truncate",
        &qcow2(d, &["io", "-c", "truncate 3M", "top.qcow2"]),
    );
    model.resize(3 << 20, 0);
    ok(
        "write past old end",
        &qcow2(d, &["io", "-c", "write -P 9 2500k 100k", "top.qcow2"]),
    );
    model[2500 << 10..2600 << 10].fill(9);
    assert_clean(d, "top.qcow2");
    assert_same_bytes(&qemu_raw(d, "top.qcow2"), &model, "grown");
    ok(
        "shrink",
        &qcow2(d, &["resize", "--shrink", "top.qcow2", "1M"]),
    );
    model.truncate(1 << 20);
    assert_clean(d, "top.qcow2");
    assert_same_bytes(&qemu_raw(d, "top.qcow2"), &model, "shrunk");
}

#[test]
fn output_and_status_like_qemu_io() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        "create",
        &qemu_img(d, &["create", "-f", "qcow2", "a.qcow2", "1M"]),
    );
    let setup = [
        "write -P 0xaa 0 128k",
        "write -z 256k 64k",
        "write -P 3 700k 1000",
    ];
    let mut args = Vec::new();
    for c in setup {
        args.extend(["-c", c]);
    }
    args.push("a.qcow2");
    ok("qemu-io", &qemu_io(d, &args));
    // Lines without timing must be identical; timing lines have the same start.
    for command in [
        "read -P 0xaa 512 1k",
        "read -P 0xab 512 1k",
        "read -P 0xaa 120k 16k",
        "read -v 130000 40",
        "read -v -P 3 700k 20",
        "map",
    ] {
        let ours = qcow2(d, &["io", "-r", "-c", command, "a.qcow2"]);
        let theirs = qemu_io(d, &["-r", "-c", command, "a.qcow2"]);
        assert_eq!(ours.status.code(), theirs.status.code(), "{command}");
        let strip = |text: String| -> Vec<String> {
            text.lines()
                .map(|l| match l.find(" ops; ") {
                    Some(at) => l[..at].to_string(),
                    None => l.to_string(),
                })
                .collect()
        };
        assert_eq!(strip(stdout(&ours)), strip(stdout(&theirs)), "{command}");
    }
    // A write on a read-only image, a read past the end and a bad command
    // fail with status 1, and the image is unchanged.
    for command in ["write 0 1", "read 1M 1", "bogus 1 2", "write -P 300 0 1"] {
        let out = qcow2(d, &["io", "-r", "-c", command, "a.qcow2"]);
        assert_eq!(out.status.code(), Some(1), "{command}");
    }
    ok(
        "unchanged",
        &qemu_io(d, &["-c", "read -P 0xaa 0 128k", "a.qcow2"]),
    );
    // A failed command does not stop the next one.
    let out = qcow2(
        d,
        &["io", "-c", "read 2M 1", "-c", "write -P 7 0 1", "a.qcow2"],
    );
    assert_eq!(out.status.code(), Some(1));
    ok(
        "later command ran",
        &qemu_io(d, &["-c", "read -P 7 0 1", "a.qcow2"]),
    );
}

#[test]
fn raw_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok("create", &qcow2(d, &["create", "-f", "raw", "d.raw", "1M"]));
    ok(
        "io raw",
        &qcow2(
            d,
            &[
                "io",
                "-f",
                "raw",
                "-c",
                "write -P 6 4000 5000",
                "-c",
                "write -z 5000 10",
                "d.raw",
            ],
        ),
    );
    ok(
        "qemu-io raw",
        &qemu_io(
            d,
            &[
                "-f",
                "raw",
                "-c",
                "read -P 6 4000 1000",
                "-c",
                "read -P 0 5000 10",
                "-c",
                "read -P 6 5010 3990",
                "d.raw",
            ],
        ),
    );
}

/// Many more seeds over every layout; slow, run with `--ignored`.
#[test]
#[ignore = "soak test: minutes; run with --ignored"]
fn soak_many_seeds() {
    let layouts = [
        ("cluster_size=512", 1 << 20),
        ("cluster_size=4k,refcount_bits=1", 2 << 20),
        ("cluster_size=64k", 4 << 20),
        ("compat=0.10,cluster_size=16k", 2 << 20),
        ("extended_l2=on,cluster_size=32k", 2 << 20),
        ("cluster_size=2M", 8 << 20),
    ];
    for seed in 100..106 {
        for (opts, size) in layouts {
            exercise(opts, size, seed, seed % 2 == 0);
        }
    }
}
