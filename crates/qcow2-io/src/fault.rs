//! A storage wrapper that fails or tears one chosen operation, for crash tests.
//!
//! [`FaultStorage`] forwards everything to the storage it wraps until an
//! armed [`Fault`] fires. The operation that fires either fails outright or
//! is torn (only a prefix of its buffer reaches the inner storage), and from
//! then on the storage is *dead*: every later change (write, zero write,
//! flush, `set_len`, `punch_hole`) fails with [`FaultError::Dead`] and never
//! reaches the inner storage, as if the machine had crashed at the fault.
//! Reads and `len` keep working, so a test can inspect what survived, either
//! through the wrapper or through [`FaultStorage::inner`].
//!
//! A fault made with [`Fault::once`] leaves the storage alive instead: only
//! the one operation fails and everything after it works, like a transient
//! error (QEMU's blkdebug `once=on`). Reads can fail too
//! ([`Trigger::Read`]), to reach the error paths of table and refcount
//! block loads.
//!
//! Typical crash test: run a workload once on a healthy wrapper and read the
//! counters ([`FaultStorage::writes_of`], [`FaultStorage::flushes`], ...),
//! then re-run it once per event, each time on a fresh wrapper armed to break
//! exactly that event, and check that the surviving image is consistent.

use std::fmt;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{Storage, WriteKind};

/// Which operation fires a [`Fault`]; `n` counts from 1 since the fault was
/// armed (see [`FaultStorage::arm`]).
///
/// A write is one call of [`Storage::write_at`] or [`Storage::write_zeroes`]
/// on the wrapper, whatever its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The `n`th write of any kind.
    Write(u64),
    /// The `n`th write whose [`WriteKind`] equals the given kind.
    WriteOf(WriteKind, u64),
    /// The `n`th flush.
    Flush(u64),
    /// The `n`th call of [`Storage::read_at`]. A tearing effect fails it
    /// whole: a read hands back nothing.
    Read(u64),
}

impl Trigger {
    /// The ordinal `n` of the triggering event.
    pub const fn nth(self) -> u64 {
        match self {
            Trigger::Write(n) | Trigger::WriteOf(_, n) | Trigger::Flush(n) | Trigger::Read(n) => n,
        }
    }

    /// True when `op` is an event this trigger counts.
    fn counts(self, op: &Op) -> bool {
        match (self, op) {
            (Trigger::Write(_), Op::Write { .. } | Op::WriteZeroes { .. }) => true,
            (Trigger::WriteOf(want, _), Op::Write { kind, .. } | Op::WriteZeroes { kind, .. }) => {
                want == *kind
            }
            (Trigger::Flush(_), Op::Flush) => true,
            (Trigger::Read(_), Op::Read { .. }) => true,
            _ => false,
        }
    }
}

/// What the triggering operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Nothing reaches the inner storage; the operation returns
    /// [`FaultError::Injected`].
    Fail,
    /// A write keeps only the first half of its buffer, rounded down to a
    /// multiple of 512 bytes (see [`Effect::kept_bytes`]), then returns
    /// [`FaultError::Injected`]. This models a crash in the middle of a
    /// write on a disk whose 512-byte sectors are written atomically. Writes
    /// shorter than 1024 bytes keep nothing. On a flush it acts as
    /// [`Effect::Fail`].
    Tear,
    /// A write keeps exactly its first `min(n, len)` bytes, then returns
    /// [`FaultError::Injected`]. With `n >= len` the whole write lands and
    /// only its completion is lost. On a flush it acts as [`Effect::Fail`].
    TearAt(u64),
}

impl Effect {
    /// How many leading bytes of a `len`-byte write this effect lets through
    /// to the inner storage: 0 for [`Effect::Fail`],
    /// `(len / 2) / 512 * 512` for [`Effect::Tear`], `min(n, len)` for
    /// [`Effect::TearAt`].
    pub const fn kept_bytes(self, len: u64) -> u64 {
        match self {
            Effect::Fail => 0,
            Effect::Tear => len / 2 / 512 * 512,
            Effect::TearAt(n) => {
                if n < len {
                    n
                } else {
                    len
                }
            }
        }
    }
}

/// A plan for one injected fault: when it fires and what happens then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fault {
    /// The operation that fires the fault.
    pub trigger: Trigger,
    /// What that operation does.
    pub effect: Effect,
    /// Whether the storage stays alive after the fault (see
    /// [`Fault::once`]).
    pub once: bool,
}

impl Fault {
    /// A fault with the given trigger and effect, after which the storage
    /// is dead.
    pub const fn new(trigger: Trigger, effect: Effect) -> Self {
        Self {
            trigger,
            effect,
            once: false,
        }
    }

    /// The same fault, but only the triggering operation fails: the
    /// storage stays alive and later operations reach the inner storage.
    pub const fn once(self) -> Self {
        Self { once: true, ..self }
    }

    /// Fails the `n`th read.
    pub const fn fail_read(n: u64) -> Self {
        Self::new(Trigger::Read(n), Effect::Fail)
    }

    /// Fails the `n`th write of any kind.
    pub const fn fail_write(n: u64) -> Self {
        Self::new(Trigger::Write(n), Effect::Fail)
    }

    /// Tears the `n`th write of any kind (see [`Effect::Tear`]).
    pub const fn tear_write(n: u64) -> Self {
        Self::new(Trigger::Write(n), Effect::Tear)
    }

    /// Fails the `n`th write of `kind`.
    pub const fn fail_write_of(kind: WriteKind, n: u64) -> Self {
        Self::new(Trigger::WriteOf(kind, n), Effect::Fail)
    }

    /// Tears the `n`th write of `kind` (see [`Effect::Tear`]).
    pub const fn tear_write_of(kind: WriteKind, n: u64) -> Self {
        Self::new(Trigger::WriteOf(kind, n), Effect::Tear)
    }

    /// Fails the `n`th flush.
    pub const fn fail_flush(n: u64) -> Self {
        Self::new(Trigger::Flush(n), Effect::Fail)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let effect = match self.effect {
            Effect::Fail => "fail".to_owned(),
            Effect::Tear => "tear".to_owned(),
            Effect::TearAt(n) => format!("tear after {n} bytes"),
        };
        match self.trigger {
            Trigger::Write(n) => write!(f, "{effect} write #{n}"),
            Trigger::WriteOf(kind, n) => write!(f, "{effect} {kind:?} write #{n}"),
            Trigger::Flush(n) => write!(f, "{effect} flush #{n}"),
            Trigger::Read(n) => write!(f, "{effect} read #{n}"),
        }?;
        if self.once {
            f.write_str(" (once)")?;
        }
        Ok(())
    }
}

/// The error a [`FaultStorage`] returns for an operation it breaks, carried
/// inside an [`io::Error`] of kind [`io::ErrorKind::Other`]; recover it with
/// [`FaultError::of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultError {
    /// This operation fired the armed fault.
    Injected,
    /// The fault fired earlier; the storage accepts no change since.
    Dead,
}

impl FaultError {
    /// The fault error inside `err`, if a [`FaultStorage`] produced it.
    pub fn of(err: &io::Error) -> Option<FaultError> {
        err.get_ref()?.downcast_ref::<FaultError>().copied()
    }
}

impl fmt::Display for FaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultError::Injected => "injected storage fault",
            FaultError::Dead => "storage is dead after an injected fault",
        })
    }
}

impl std::error::Error for FaultError {}

impl From<FaultError> for io::Error {
    fn from(err: FaultError) -> Self {
        io::Error::other(err)
    }
}

/// An operation that changes the storage, as seen by a [`FaultStorage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Storage::write_at`] of `len` bytes.
    Write {
        /// Start of the write.
        offset: u64,
        /// Length of the buffer.
        len: u64,
        /// What the write carries.
        kind: WriteKind,
    },
    /// [`Storage::write_zeroes`] of `len` bytes.
    WriteZeroes {
        /// Start of the zeroed range.
        offset: u64,
        /// Length of the zeroed range.
        len: u64,
        /// What the write carries.
        kind: WriteKind,
    },
    /// [`Storage::flush`].
    Flush,
    /// [`Storage::set_len`] to the given length.
    SetLen(u64),
    /// [`Storage::punch_hole`].
    PunchHole {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
    },
    /// [`Storage::read_at`] of `len` bytes (counted, never logged).
    Read {
        /// Start of the read.
        offset: u64,
        /// Length of the buffer.
        len: u64,
    },
}

/// What became of a recorded operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Passed to the inner storage (which may still have failed it).
    Forwarded,
    /// Fired the fault with [`Effect::Fail`] (or a tear on a flush): nothing
    /// reached the inner storage.
    Failed,
    /// Fired the fault with a tearing effect: only the first `kept` bytes
    /// were passed to the inner storage.
    Torn {
        /// Bytes passed to the inner storage.
        kept: u64,
    },
    /// Refused because the storage was already dead.
    Refused,
}

/// One entry of the operation log (see [`FaultStorage::set_recording`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    /// The operation.
    pub op: Op,
    /// What became of it.
    pub outcome: Outcome,
}

/// Position of `kind` in [`WriteKind::ALL`], used to index the counters.
fn kind_index(kind: WriteKind) -> usize {
    match kind {
        WriteKind::Header => 0,
        WriteKind::L1 => 1,
        WriteKind::L2 => 2,
        WriteKind::RefcountBlock => 3,
        WriteKind::RefcountTable => 4,
        WriteKind::Data => 5,
        WriteKind::Snapshot => 6,
        WriteKind::DedupTable => 7,
        WriteKind::Other => 8,
    }
}

/// An armed fault and how many matching events it has seen.
#[derive(Debug)]
struct Armed {
    fault: Fault,
    seen: u64,
}

#[derive(Debug, Default)]
struct State {
    writes: [u64; WriteKind::ALL.len()],
    flushes: u64,
    reads: u64,
    armed: Option<Armed>,
    fired: Option<Record>,
    /// Set when a fault that is not `once` fired.
    dead: bool,
    recording: bool,
    log: Vec<Record>,
}

/// What to do with one operation.
enum Decision {
    Forward,
    Fire(Effect),
    Refuse,
}

/// Wraps a [`Storage`] and breaks one chosen operation on request; see the
/// [module documentation](self) for the model.
///
/// All methods take `&self` and the wrapper is `Send + Sync`, so a fault can
/// be armed while other threads use the storage. Counting and the decision
/// to fire happen under one lock, so with concurrent writers exactly one
/// operation fires, and every operation that starts after the firing one has
/// returned its error is refused. The I/O itself runs outside the lock.
#[derive(Debug)]
pub struct FaultStorage<S> {
    inner: S,
    state: Mutex<State>,
}

impl<S: Storage> FaultStorage<S> {
    /// Wraps `inner`, unarmed, with zeroed counters.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            state: Mutex::new(State::default()),
        }
    }

    /// Wraps `inner` already armed with `fault`.
    ///
    /// # Panics
    ///
    /// When the fault's ordinal is 0 (see [`FaultStorage::arm`]).
    pub fn with_fault(inner: S, fault: Fault) -> Self {
        let storage = Self::new(inner);
        storage.arm(fault);
        storage
    }

    /// Arms `fault`, replacing any pending one. Its ordinal counts matching
    /// events from 1 starting now, and a dead storage comes back to life
    /// (as with [`FaultStorage::revive`]). The lifetime counters are kept.
    ///
    /// # Panics
    ///
    /// When the fault's ordinal ([`Trigger::nth`]) is 0, which could never
    /// fire.
    pub fn arm(&self, fault: Fault) {
        assert!(
            fault.trigger.nth() > 0,
            "fault ordinals count from 1: {fault:?}"
        );
        let mut state = self.lock();
        state.fired = None;
        state.dead = false;
        state.armed = Some(Armed { fault, seen: 0 });
    }

    /// Drops the pending fault, if any, and returns it. A storage that is
    /// already dead stays dead; use [`FaultStorage::revive`] for that.
    pub fn disarm(&self) -> Option<Fault> {
        self.lock().armed.take().map(|armed| armed.fault)
    }

    /// Drops the pending fault and makes a dead storage accept changes
    /// again, like a machine rebooted after the crash.
    pub fn revive(&self) {
        let mut state = self.lock();
        state.armed = None;
        state.fired = None;
        state.dead = false;
    }

    /// The fault waiting to fire, if any.
    pub fn armed(&self) -> Option<Fault> {
        self.lock().armed.as_ref().map(|armed| armed.fault)
    }

    /// True once the armed fault has fired; the storage is then dead until
    /// the next [`FaultStorage::arm`] or [`FaultStorage::revive`], unless
    /// the fault was [`Fault::once`].
    pub fn fired(&self) -> bool {
        self.lock().fired.is_some()
    }

    /// True while the storage refuses changes after a fault.
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// The operation that fired the fault and what became of it, until the
    /// next [`FaultStorage::arm`] or [`FaultStorage::revive`].
    pub fn fired_by(&self) -> Option<Record> {
        self.lock().fired
    }

    /// Writes (both [`Storage::write_at`] and [`Storage::write_zeroes`]) of
    /// `kind` attempted since creation, including failed and refused ones.
    pub fn writes_of(&self, kind: WriteKind) -> u64 {
        self.lock().writes[kind_index(kind)]
    }

    /// Writes of every kind attempted since creation, including failed and
    /// refused ones.
    pub fn writes(&self) -> u64 {
        self.lock().writes.iter().sum()
    }

    /// Flushes attempted since creation, including failed and refused ones.
    pub fn flushes(&self) -> u64 {
        self.lock().flushes
    }

    /// Reads attempted since creation, including failed ones.
    pub fn reads(&self) -> u64 {
        self.lock().reads
    }

    /// Starts or stops recording every changing operation (writes, zero
    /// writes, flushes, `set_len`, `punch_hole`) with its outcome. Off by
    /// default; stopping keeps what was recorded.
    pub fn set_recording(&self, on: bool) {
        self.lock().recording = on;
    }

    /// Returns the recorded operations, oldest first, and clears the log.
    pub fn take_log(&self) -> Vec<Record> {
        std::mem::take(&mut self.lock().log)
    }

    /// The wrapped storage, for inspecting what reached it.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the storage.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `op`, decides its fate, and logs it.
    fn decide(&self, op: Op) -> Decision {
        let mut state = self.lock();
        let state = &mut *state;
        match op {
            Op::Write { kind, .. } | Op::WriteZeroes { kind, .. } => {
                state.writes[kind_index(kind)] += 1;
            }
            Op::Flush => state.flushes += 1,
            Op::Read { .. } => state.reads += 1,
            Op::SetLen(_) | Op::PunchHole { .. } => {}
        }

        let mut decision = Decision::Forward;
        if state.dead {
            decision = Decision::Refuse;
        } else if let Some(armed) = state.armed.as_mut() {
            if armed.fault.trigger.counts(&op) {
                armed.seen += 1;
                if armed.seen == armed.fault.trigger.nth() {
                    decision = Decision::Fire(armed.fault.effect);
                }
            }
        }

        let outcome = match decision {
            Decision::Forward => Outcome::Forwarded,
            Decision::Refuse => Outcome::Refused,
            Decision::Fire(effect) => match op {
                Op::Write { len, .. } | Op::WriteZeroes { len, .. } if effect != Effect::Fail => {
                    Outcome::Torn {
                        kept: effect.kept_bytes(len),
                    }
                }
                _ => Outcome::Failed,
            },
        };
        let record = Record { op, outcome };
        if let Decision::Fire(_) = decision {
            let once = state.armed.take().is_some_and(|a| a.fault.once);
            state.fired = Some(record);
            state.dead = !once;
        }
        if state.recording && !matches!(op, Op::Read { .. }) {
            state.log.push(record);
        }
        decision
    }

    /// Runs a non-write change unless the storage is dead or the fault fires
    /// on it (only flushes can fire).
    fn guarded<T>(&self, op: Op, run: impl FnOnce(&S) -> io::Result<T>) -> io::Result<T> {
        match self.decide(op) {
            Decision::Forward => run(&self.inner),
            Decision::Fire(_) => Err(FaultError::Injected.into()),
            Decision::Refuse => Err(FaultError::Dead.into()),
        }
    }
}

impl<S: Storage> Storage for FaultStorage<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        match self.decide(Op::Read { offset, len }) {
            Decision::Fire(_) => Err(FaultError::Injected.into()),
            // A dead storage still reads: tests inspect what survived.
            Decision::Forward | Decision::Refuse => self.inner.read_at(buf, offset),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64, kind: WriteKind) -> io::Result<()> {
        let len = buf.len() as u64;
        match self.decide(Op::Write { offset, len, kind }) {
            Decision::Forward => self.inner.write_at(buf, offset, kind),
            Decision::Refuse => Err(FaultError::Dead.into()),
            Decision::Fire(effect) => {
                // kept_bytes never exceeds len, which came from a usize.
                let kept = usize::try_from(effect.kept_bytes(len)).unwrap_or(buf.len());
                if kept > 0 {
                    self.inner.write_at(&buf[..kept], offset, kind)?;
                }
                Err(FaultError::Injected.into())
            }
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, kind: WriteKind) -> io::Result<()> {
        match self.decide(Op::WriteZeroes { offset, len, kind }) {
            Decision::Forward => self.inner.write_zeroes(offset, len, kind),
            Decision::Refuse => Err(FaultError::Dead.into()),
            Decision::Fire(effect) => {
                let kept = effect.kept_bytes(len);
                if kept > 0 {
                    self.inner.write_zeroes(offset, kept, kind)?;
                }
                Err(FaultError::Injected.into())
            }
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.guarded(Op::Flush, |inner| inner.flush())
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.guarded(Op::SetLen(len), |inner| inner.set_len(len))
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        self.guarded(Op::PunchHole { offset, len }, |inner| {
            inner.punch_hole(offset, len)
        })
    }
}
