//! The crash model's storage: a volatile write cache over memory.
#![allow(dead_code)]

use super::*;

// ---------------------------------------------------------------------------
// Volatile write cache
// ---------------------------------------------------------------------------

/// A change not yet made durable by a flush.
#[derive(Clone, Debug)]
enum Pending {
    Write {
        offset: u64,
        bytes: Vec<u8>,
        kind: WriteKind,
    },
    SetLen(u64),
}

#[derive(Debug)]
struct VolatileState {
    /// What a flush has made durable.
    durable: Vec<u8>,
    /// What readers see: `durable` plus every pending change, in order.
    current: Vec<u8>,
    pending: Vec<Pending>,
}

fn apply(bytes: &mut Vec<u8>, change: &Pending) {
    match change {
        Pending::Write {
            offset,
            bytes: data,
            ..
        } => {
            if data.is_empty() {
                return;
            }
            let start = *offset as usize;
            let end = start + data.len();
            grow(bytes, end);
            bytes[start..end].copy_from_slice(data);
        }
        Pending::SetLen(len) => {
            bytes.truncate(*len as usize);
            grow(bytes, *len as usize);
        }
    }
}

/// Extends `bytes` with zeros to `len` (`Vec::resize` is slow in debug
/// builds; a zeroed allocation is not).
fn grow(bytes: &mut Vec<u8>, len: usize) {
    if bytes.len() < len {
        bytes.extend_from_slice(&vec![0u8; len - bytes.len()]);
    }
}

/// Which unflushed changes survive the crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Survivors {
    /// Every change reached the disk (the write cache was written through).
    All,
    /// Nothing after the last completed flush reached the disk.
    None,
    /// Each unflushed change independently survived or not (seeded).
    Random(u64),
}

/// In-memory storage that keeps unflushed changes apart, so a test can
/// materialise the disk a crash would leave under several cache behaviours.
#[derive(Debug)]
pub struct VolatileStorage {
    state: Mutex<VolatileState>,
}

impl VolatileStorage {
    /// Storage whose durable content is `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            state: Mutex::new(VolatileState {
                durable: bytes.clone(),
                current: bytes,
                pending: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VolatileState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of changes not yet flushed.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// What the disk holds after a crash now, when `survivors` of the
    /// unflushed changes made it.
    pub fn crash_image(&self, survivors: Survivors) -> Vec<u8> {
        let state = self.lock();
        match survivors {
            Survivors::All => state.current.clone(),
            Survivors::None => state.durable.clone(),
            Survivors::Random(seed) => {
                let mut bytes = state.durable.clone();
                for (change, keep) in state
                    .pending
                    .iter()
                    .zip(random_mask(seed, state.pending.len()))
                {
                    if keep {
                        apply(&mut bytes, change);
                    }
                }
                bytes
            }
        }
    }

    /// The unflushed changes, in order, marked `+` when they survive under
    /// `survivors` and `-` when lost (for failure reports).
    pub fn describe_pending(&self, survivors: Survivors) -> String {
        let state = self.lock();
        let keep: Vec<bool> = match survivors {
            Survivors::All => vec![true; state.pending.len()],
            Survivors::None => vec![false; state.pending.len()],
            Survivors::Random(seed) => random_mask(seed, state.pending.len()),
        };
        let mut text = String::new();
        for (change, keep) in state.pending.iter().zip(keep) {
            let sign = if keep { '+' } else { '-' };
            match change {
                Pending::Write {
                    offset,
                    bytes,
                    kind,
                } => {
                    let _ = write!(text, " {sign}{kind:?}@{offset:#x}/{:#x}", bytes.len());
                }
                Pending::SetLen(len) => {
                    let _ = write!(text, " {sign}set_len({len:#x})");
                }
            }
        }
        text
    }

    fn push(&self, change: Pending) {
        let mut state = self.lock();
        apply(&mut state.current, &change);
        state.pending.push(change);
    }
}

impl Storage for VolatileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let state = self.lock();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let avail = state.current.len().saturating_sub(start).min(buf.len());
        if avail > 0 {
            buf[..avail].copy_from_slice(&state.current[start..start + avail]);
        }
        buf[avail..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, kind: WriteKind) -> io::Result<()> {
        self.push(Pending::Write {
            offset,
            bytes: buf.to_vec(),
            kind,
        });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut state = self.lock();
        let pending = std::mem::take(&mut state.pending);
        for change in &pending {
            apply(&mut state.durable, change);
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.push(Pending::SetLen(len));
        Ok(())
    }
}

fn random_mask(seed: u64, len: usize) -> Vec<bool> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.below(2) == 0).collect()
}
