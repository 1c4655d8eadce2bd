//! The `Storage` trait every image back end implements.

use std::io;
use std::sync::Arc;

/// What a write carries, so a fault-injecting storage can target one kind of
/// metadata update (crash tests) and a tracer can tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteKind {
    /// The image header and its extension area.
    Header,
    /// An active or snapshot L1 table.
    L1,
    /// An L2 table.
    L2,
    /// A refcount block.
    RefcountBlock,
    /// The refcount table.
    RefcountTable,
    /// Guest data (uncompressed or compressed clusters).
    Data,
    /// The snapshot table.
    Snapshot,
    /// A dedup table cluster (seed extension).
    DedupTable,
    /// Anything else, such as zeroing a fresh metadata cluster.
    Other,
}

impl WriteKind {
    /// Every kind, for tests that iterate over metadata events.
    pub const ALL: [WriteKind; 9] = [
        WriteKind::Header,
        WriteKind::L1,
        WriteKind::L2,
        WriteKind::RefcountBlock,
        WriteKind::RefcountTable,
        WriteKind::Data,
        WriteKind::Snapshot,
        WriteKind::DedupTable,
        WriteKind::Other,
    ];

    /// True for every kind except guest data.
    pub const fn is_metadata(self) -> bool {
        !matches!(self, WriteKind::Data)
    }
}

/// Byte-addressed storage with positioned I/O, shared between threads.
///
/// Reads past the end return zeros, as QEMU's block layer does for a file
/// node; callers that must reject such reads check [`Storage::len`] first.
pub trait Storage: Send + Sync {
    /// Fills `buf` from `offset`; bytes past the end read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` at `offset`, growing the storage when needed.
    fn write_at(&self, buf: &[u8], offset: u64, kind: WriteKind) -> io::Result<()>;

    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;

    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// True when the storage holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Truncates or extends (with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Deallocates a range so it reads as zeros; returns `false` when the
    /// back end cannot (the range is then left as it was).
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        let _ = (offset, len);
        Ok(false)
    }

    /// Whether `offset` lies in data (`true`) or in a hole that reads as
    /// zeros (`false`), and where that run ends (at most [`Storage::len`]).
    /// Back ends that cannot tell report data up to the end.
    fn data_run(&self, offset: u64) -> io::Result<(bool, u64)> {
        Ok((true, self.len()?.max(offset)))
    }

    /// Asks the back end to start writing completed writes to stable
    /// storage without waiting for them, so a later [`Storage::flush`] has
    /// less left to do. Only a hint: the default does nothing.
    fn start_writeback(&self) -> io::Result<()> {
        Ok(())
    }

    /// Writes `len` zero bytes at `offset`.
    fn write_zeroes(&self, offset: u64, len: u64, kind: WriteKind) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            self.write_at(&zeros[..n as usize], offset + done, kind)?;
            done += n;
        }
        Ok(())
    }
}

macro_rules! forward_storage {
    ($($ty:ty),*) => {$(
        impl<S: Storage + ?Sized> Storage for $ty {
            fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
                (**self).read_at(buf, offset)
            }
            fn write_at(&self, buf: &[u8], offset: u64, kind: WriteKind) -> io::Result<()> {
                (**self).write_at(buf, offset, kind)
            }
            fn flush(&self) -> io::Result<()> {
                (**self).flush()
            }
            fn len(&self) -> io::Result<u64> {
                (**self).len()
            }
            fn set_len(&self, len: u64) -> io::Result<()> {
                (**self).set_len(len)
            }
            fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
                (**self).punch_hole(offset, len)
            }
            fn write_zeroes(&self, offset: u64, len: u64, kind: WriteKind) -> io::Result<()> {
                (**self).write_zeroes(offset, len, kind)
            }
            fn data_run(&self, offset: u64) -> io::Result<(bool, u64)> {
                (**self).data_run(offset)
            }
            fn start_writeback(&self) -> io::Result<()> {
                (**self).start_writeback()
            }
        }
    )*};
}

forward_storage!(Arc<S>, Box<S>, &S);
