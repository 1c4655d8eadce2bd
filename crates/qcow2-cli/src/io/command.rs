//! Parsing one `-c` command of `qcow2 io`, with qemu-io's syntax.

use crate::size_arg::parse_size;

/// Help listing the commands.
pub const COMMANDS_HELP: &str = "\
Commands (each -c argument is one command; options come before operands):
  read [-P PATTERN] [-v] [-q] OFFSET LENGTH
      read bytes; -P checks that every byte equals PATTERN and prints
      \"Pattern verification failed at offset OFFSET, LENGTH bytes\" (exit 1)
      when one does not; -v dumps the bytes in hex
  write [-P PATTERN] [-c | -z [-u]] [-q] OFFSET LENGTH
      write bytes equal to PATTERN (default 0xcd); -c stores whole clusters
      compressed (OFFSET and LENGTH cluster aligned, or LENGTH reaching the
      end of the disk); -z writes zeros without data (zero clusters), -u
      lets zeroed clusters be unmapped
  discard [-q] OFFSET LENGTH
      discard whole clusters (they read as zeros; a compat=0.10 image with
      a backing file keeps its clusters, as in QEMU)
  truncate SIZE
      change the virtual size (grow or shrink)
  map
      print which ranges are allocated in FILE itself (not its backing file)
  flush
      make every change durable
OFFSET, LENGTH and SIZE take suffixes k, M, G, T. PATTERN is a byte, in
decimal or 0x hex.";

/// One parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoCommand {
    /// `read`.
    Read {
        /// Expected value of every byte.
        pattern: Option<u8>,
        /// Dump the bytes.
        verbose: bool,
        /// No summary line.
        quiet: bool,
        /// Guest offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// `write`.
    Write {
        /// Byte written (ignored with `zero`).
        pattern: u8,
        /// Write zeros as a zero-write request.
        zero: bool,
        /// Allow unmapping with `zero`.
        unmap: bool,
        /// Store whole clusters compressed.
        compressed: bool,
        /// No summary line.
        quiet: bool,
        /// Guest offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// `discard`.
    Discard {
        /// No summary line.
        quiet: bool,
        /// Guest offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// `truncate`.
    Truncate {
        /// New virtual size.
        size: u64,
    },
    /// `map`.
    Map,
    /// `flush`.
    Flush,
}

/// Flags seen before the operands.
#[derive(Default)]
struct Flags {
    pattern: Option<u8>,
    verbose: bool,
    quiet: bool,
    zero: bool,
    unmap: bool,
    compressed: bool,
}

fn parse_pattern(text: &str) -> Result<u8, String> {
    let value = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse::<u64>().ok(),
    };
    value
        .and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| format!("{text} is not a valid pattern byte"))
}

fn parse_number(text: &str) -> Result<u64, String> {
    parse_size(text).ok_or_else(|| format!("non-numeric length argument -- {text}"))
}

impl IoCommand {
    /// Parses a command line such as `write -P 0xaa 0 64k`.
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        let name = words.next().ok_or("empty command")?;
        let allowed = match name {
            "read" | "r" => "Pvq",
            "write" | "w" => "Pzucq",
            "discard" | "d" => "q",
            "truncate" | "t" | "map" | "flush" | "f" => "",
            _ => return Err(format!("command \"{name}\" not found")),
        };
        let mut flags = Flags::default();
        let mut operands = Vec::new();
        while let Some(word) = words.next() {
            let Some(letters) = word.strip_prefix('-').filter(|l| !l.is_empty()) else {
                operands.push(word);
                operands.extend(words.by_ref());
                break;
            };
            for letter in letters.chars() {
                if !allowed.contains(letter) {
                    return Err(format!("{name}: invalid option -- '{letter}'"));
                }
                match letter {
                    'P' => {
                        let value = words.next().ok_or("-P needs a pattern")?;
                        flags.pattern = Some(parse_pattern(value)?);
                    }
                    'v' => flags.verbose = true,
                    'q' => flags.quiet = true,
                    'z' => flags.zero = true,
                    'c' => flags.compressed = true,
                    _ => flags.unmap = true,
                }
            }
        }
        if flags.unmap && !flags.zero {
            return Err("-u requires -z to be specified".into());
        }
        if flags.zero && flags.compressed {
            return Err("-c and -z cannot be specified at the same time".into());
        }
        if flags.zero && flags.pattern.is_some() {
            return Err("-z and -P cannot be specified at the same time".into());
        }
        let expect = |n: usize| -> Result<(), String> {
            if operands.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "{name}: expected {n} argument(s), got {}",
                    operands.len()
                ))
            }
        };
        Ok(match name {
            "read" | "r" => {
                expect(2)?;
                IoCommand::Read {
                    pattern: flags.pattern,
                    verbose: flags.verbose,
                    quiet: flags.quiet,
                    offset: parse_number(operands[0])?,
                    len: parse_number(operands[1])?,
                }
            }
            "write" | "w" => {
                expect(2)?;
                IoCommand::Write {
                    pattern: flags.pattern.unwrap_or(0xcd),
                    zero: flags.zero,
                    unmap: flags.unmap,
                    compressed: flags.compressed,
                    quiet: flags.quiet,
                    offset: parse_number(operands[0])?,
                    len: parse_number(operands[1])?,
                }
            }
            "discard" | "d" => {
                expect(2)?;
                IoCommand::Discard {
                    quiet: flags.quiet,
                    offset: parse_number(operands[0])?,
                    len: parse_number(operands[1])?,
                }
            }
            "truncate" | "t" => {
                expect(1)?;
                IoCommand::Truncate {
                    size: parse_number(operands[0])?,
                }
            }
            "map" => {
                expect(0)?;
                IoCommand::Map
            }
            _ => {
                expect(0)?;
                IoCommand::Flush
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_io_syntax() {
        assert_eq!(
            IoCommand::parse("write -P 0xaa 4k 1M").unwrap(),
            IoCommand::Write {
                pattern: 0xaa,
                zero: false,
                unmap: false,
                compressed: false,
                quiet: false,
                offset: 4096,
                len: 1 << 20
            }
        );
        assert_eq!(
            IoCommand::parse("write -z -u 0 64k").unwrap(),
            IoCommand::Write {
                pattern: 0xcd,
                zero: true,
                unmap: true,
                compressed: false,
                quiet: false,
                offset: 0,
                len: 65536
            }
        );
        assert!(matches!(
            IoCommand::parse("read -vP 7 0 1").unwrap(),
            IoCommand::Read {
                pattern: Some(7),
                verbose: true,
                ..
            }
        ));
        assert!(IoCommand::parse("write -P 300 0 1").is_err());
        assert!(IoCommand::parse("write -u 0 1").is_err());
        assert!(IoCommand::parse("write -c -z 0 64k").is_err());
        assert!(matches!(
            IoCommand::parse("write -c -P 1 0 64k").unwrap(),
            IoCommand::Write {
                compressed: true,
                pattern: 1,
                ..
            }
        ));
        assert!(IoCommand::parse("bogus").is_err());
        assert!(IoCommand::parse("read 0").is_err());
    }
}
