//! The guest disk a golden image should hold, worked out from the
//! commands `manifest.json` records for it (the `qemu-io` writes, zero
//! writes and discards QEMU was told to make), not from the image's
//! tables: an oracle independent of every reader in this workspace.

use std::path::Path;

use serde_json::Value;

/// Where to stop replaying an image's commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// Replay every command.
    End,
    /// Stop before the first `qemu-img snapshot -c` (the content the
    /// snapshot it creates holds).
    SnapshotCreate,
    /// Stop before the first `qemu-img bitmap --add` (the content before
    /// any bitmap recorded a write).
    BitmapAdd,
}

/// One manifest entry: its file name, virtual size, backing file and the
/// command lists in order.
struct Entry {
    size: u64,
    backing: Option<String>,
    commands: Vec<Vec<String>>,
}

fn manifest(dir: &Path) -> Result<Value, String> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn entry(manifest: &Value, name: &str) -> Result<Entry, String> {
    let e = manifest["images"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["name"] == name))
        .ok_or_else(|| format!("no golden {name:?} in the manifest"))?;
    let list = |key: &str| -> Vec<Vec<String>> {
        e[key]
            .as_array()
            .map(|l| l.iter().map(strings).collect())
            .unwrap_or_default()
    };
    let create = strings(&e["qemu_img_args"]);
    let backing = create
        .iter()
        .position(|w| w == "-b")
        .and_then(|k| create.get(k + 1))
        .map(|f| f.trim_end_matches(".qcow2").to_string());
    let mut commands = list("pre_qemu_img_args");
    commands.push(create);
    commands.extend(list("post_qemu_img_args"));
    Ok(Entry {
        size: e["virtual_size"]
            .as_u64()
            .ok_or_else(|| format!("golden {name:?} records no virtual_size"))?,
        backing,
        commands,
    })
}

/// A size argument of qemu-io: bytes, or a number with k, m or g.
fn size_arg(word: &str) -> Result<u64, String> {
    let (digits, unit) = match word.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((at, _)) => word.split_at(at),
        None => (word, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("size {word:?} is not a number"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return Err(format!("size {word:?} has an unknown unit")),
    };
    Ok(n << shift)
}

/// Applies one qemu-io command line (`write [-c] [-z | -P 0xNN] OFF LEN`
/// or `discard OFF LEN`) to `disk`.
fn apply(disk: &mut [u8], line: &str) -> Result<(), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut fill = 0xcdu8; // qemu-io's default pattern
    let mut it = words.iter().skip(1);
    while let Some(&w) = it.next() {
        match w {
            "-c" => {}
            "-z" => fill = 0,
            "-P" => {
                let p = it.next().ok_or("-P without a pattern")?;
                fill = u8::from_str_radix(p.trim_start_matches("0x"), 16)
                    .map_err(|_| format!("pattern {p:?}"))?;
            }
            w if w.starts_with('-') => return Err(format!("qemu-io flag {w} is not modelled")),
            _ => {}
        }
    }
    // A discard reads back as zeros in every golden that uses one (no
    // backing file below it).
    let fill = match words.first() {
        Some(&"write") => fill,
        Some(&"discard") => 0,
        other => return Err(format!("qemu-io command {other:?} is not modelled")),
    };
    let (offset, len) = range_of(line)?;
    let range = usize::try_from(offset)
        .ok()
        .zip(usize::try_from(offset.saturating_add(len)).ok())
        .filter(|&(_, end)| end <= disk.len())
        .ok_or_else(|| format!("{line:?} lies outside the disk"))?;
    disk[range.0..range.1].fill(fill);
    Ok(())
}

/// The guest range (offset, length) a qemu-io command line names: its two
/// numeric arguments.
pub fn range_of(line: &str) -> Result<(u64, u64), String> {
    let mut words = line.split_whitespace().skip(1).peekable();
    let mut args = Vec::new();
    while let Some(w) = words.next() {
        if w == "-P" {
            words.next();
        } else if !w.starts_with('-') {
            args.push(size_arg(w)?);
        }
    }
    match args[..] {
        [offset, len] => Ok((offset, len)),
        _ => Err(format!("{line:?}: not OFFSET LENGTH")),
    }
}

/// The commands recorded for golden `name`, in the order they ran.
pub fn commands(name: &str) -> Result<Vec<Vec<String>>, String> {
    let m = manifest(&crate::corpus::golden_dir())?;
    entry(&m, name).map(|e| e.commands)
}

/// The qemu-io `-c` argument of a recorded command, if it is one.
pub fn qemu_io_line(cmd: &[String]) -> Option<&str> {
    if cmd.first().map(String::as_str) != Some(crate::duties::QEMU_IO) {
        return None;
    }
    let k = cmd.iter().position(|w| w == "-c")?;
    cmd.get(k + 1).map(String::as_str)
}

fn stops(cmd: &[String], until: Until) -> bool {
    let words: Vec<&str> = cmd.iter().map(String::as_str).collect();
    match until {
        Until::End => false,
        Until::SnapshotCreate => words.starts_with(&["snapshot", "-c"]),
        Until::BitmapAdd => words.starts_with(&["bitmap", "--add"]),
    }
}

/// The guest disk of golden `name` as its recorded commands leave it,
/// replayed up to `until`, over its backing golden's disk when it has one
/// (bytes past the backing disk's end are zeros; `qemu-img snapshot -a`
/// brings back the content of the snapshot it loads).
pub fn guest_disk(name: &str, until: Until) -> Result<Vec<u8>, String> {
    let m = manifest(&crate::corpus::golden_dir())?;
    disk_of(&m, name, until, 0)
}

fn disk_of(m: &Value, name: &str, until: Until, depth: u32) -> Result<Vec<u8>, String> {
    if depth > 4 {
        return Err(format!("backing chain of {name:?} too deep"));
    }
    let e = entry(m, name)?;
    let len = usize::try_from(e.size).map_err(|_| format!("{name:?} too large to model"))?;
    if len > 64 << 20 {
        return Err(format!("{name:?} is too large to model ({len} bytes)"));
    }
    let mut disk = match &e.backing {
        Some(b) => {
            let mut d = disk_of(m, b, Until::End, depth + 1)?;
            d.resize(len, 0);
            d
        }
        None => vec![0; len],
    };
    let mut snapshot: Option<Vec<u8>> = None;
    for cmd in &e.commands {
        if stops(cmd, until) {
            break;
        }
        let words: Vec<&str> = cmd.iter().map(String::as_str).collect();
        if words.starts_with(&["snapshot", "-c"]) {
            snapshot = Some(disk.clone());
        } else if words.starts_with(&["snapshot", "-a"]) {
            disk = snapshot.clone().ok_or("snapshot -a before snapshot -c")?;
        } else if let Some(line) = qemu_io_line(cmd) {
            apply(&mut disk, line).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    Ok(disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_replay_in_order() {
        let mut d = vec![0u8; 1 << 20];
        apply(&mut d, "write -P 0x5a 0 128k").unwrap();
        apply(&mut d, "write -z 64k 4k").unwrap();
        apply(&mut d, "write -c -P 0x33 1000 24").unwrap();
        assert_eq!((d[0], d[65535], d[65536], d[69632]), (0x5a, 0x5a, 0, 0x5a));
        assert_eq!(
            (d[999], d[1000], d[1023], d[1024]),
            (0x5a, 0x33, 0x33, 0x5a)
        );
        apply(&mut d, "discard 0 64k").unwrap();
        assert_eq!(d[100], 0);
        assert!(apply(&mut d, "write -P 0x11 1M 1").is_err());
        assert!(apply(&mut d, "read 0 1").is_err());
        assert!(apply(&mut d, "write -q 0 1").is_err());
    }
}
