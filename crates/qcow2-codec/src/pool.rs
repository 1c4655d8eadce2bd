//! Per-thread buffer pool behind the brotli crates' allocator hook.
//!
//! The `brotli` encoder and the `brotli-decompressor` decoder cannot be reset
//! for a new stream, but they take every working buffer (hash tables, ring
//! buffers, command and histogram arrays, Huffman tables) from an allocator
//! they are generic over. [`PoolAlloc`] is that allocator. Like the crates'
//! own `StandardAlloc` it hands out boxed slices filled with `T::default()`,
//! but it takes them from a per-thread cache when one fits, and every buffer
//! goes back to that cache when the crate frees or drops it. So once a thread
//! has handled a cluster, the next one of the same size and level finds its
//! buffers cached and the global allocator is not called for them.
//!
//! * **Fit.** A request for `len` elements of `T` takes the smallest cached
//!   `T` buffer holding at least `len` and at most `2 * len` elements; the
//!   crate sees exactly `len` of them, set to `T::default()`. A new buffer is
//!   allocated with its length rounded up to a size class (under 12.5% more),
//!   so that tables whose size varies a little with the data share buffers.
//! * **Bounds.** A thread caches at most [`MAX_CACHED_BYTES`] in at most
//!   [`MAX_CACHED_BUFFERS`] buffers; to make room, the buffers returned
//!   longest ago are dropped first.
//! * **Huge buffers.** Buffers of [`HUGE_BYTES`] and more are recycled only
//!   for an input of at least 1/[`HUGE_BYTES_PER_INPUT_BYTE`] of their size.
//!   The system allocator gives such buffers fresh, lazily zeroed pages, so a
//!   small input that touches few of them pays less than zeroing a recycled
//!   one would cost.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::mem::size_of;

use brotli::{Allocator, SliceWrapper, SliceWrapperMut};

/// Most bytes of buffers one thread keeps cached.
///
/// Measured working sets: under 3 MiB for a 64 KiB cluster at the default
/// level, about 10 MiB at level 8 and 35 MiB at level 10 (the crate's
/// quality-9 hasher has a 32 MiB table); a 2 MiB cluster at the default level
/// needs over 64 MiB, so such clusters still reallocate part of their state.
pub(crate) const MAX_CACHED_BYTES: usize = 64 << 20;

/// Most buffers one thread keeps cached (bounds the search per request).
pub(crate) const MAX_CACHED_BUFFERS: usize = 256;

/// Size from which a buffer is "huge": glibc maps allocations of this size
/// and more straight from the kernel (its largest mmap threshold), which
/// zeroes their pages only when they are first touched.
pub(crate) const HUGE_BYTES: usize = 32 << 20;

/// A huge buffer is recycled only when the input has at least one byte per
/// this many bytes of buffer: then the encoder touches most of the buffer
/// anyway, and zeroing it in place is cheaper than faulting in fresh pages
/// (a 64 KiB cluster at level 10 compresses twice as fast that way, a 4 KiB
/// one about 25% slower).
pub(crate) const HUGE_BYTES_PER_INPUT_BYTE: usize = 1024;

/// Counters of this thread's brotli buffer pool.
///
/// Every non-empty buffer the brotli encoder or decoder requests is counted
/// once, either as *fresh* (made by the global allocator) or as *reused*
/// (taken from the cache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrotliPoolStats {
    /// Requests served by a new allocation.
    pub fresh: u64,
    /// Bytes of those new allocations.
    pub fresh_bytes: u64,
    /// Largest single new allocation so far, in bytes.
    pub largest_fresh_bytes: u64,
    /// Requests served from the cache.
    pub reused: u64,
    /// Bytes the crates asked for in those requests.
    pub reused_bytes: u64,
    /// Returned buffers the cache dropped (to stay within its bounds, or too
    /// big to cache at all).
    pub dropped: u64,
    /// Buffers in the cache now.
    pub cached_buffers: usize,
    /// Bytes in the cache now.
    pub cached_bytes: usize,
}

/// This thread's pool counters (all zero on a thread that never used
/// brotli).
///
/// For tests and diagnostics; not a stable interface.
#[doc(hidden)]
pub fn brotli_pool_stats() -> BrotliPoolStats {
    POOL.try_with(|pool| pool.try_borrow().map(|p| p.stats).unwrap_or_default())
        .unwrap_or_default()
}

fn bytes_of<T>(len: usize) -> usize {
    len.saturating_mul(size_of::<T>())
}

/// Length to allocate for a request of `len` elements: `len` rounded up to
/// one of 8 steps per power of two (so less than 12.5% more).
fn size_class(len: usize) -> usize {
    let bits = usize::BITS - len.leading_zeros();
    if bits <= 4 {
        return len;
    }
    let step = 1usize << (bits - 4);
    len.div_ceil(step).saturating_mul(step)
}

/// A free buffer and when it came back (a per-thread clock).
struct Cached<T> {
    returned: u64,
    buf: Vec<T>,
}

/// The free buffers of one element type, oldest first.
struct Shelf<T> {
    free: Vec<Cached<T>>,
}

/// A [`Shelf`] of any element type.
trait AnyShelf {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// When the oldest buffer on the shelf came back.
    fn oldest(&self) -> Option<u64>;
    /// Drops the oldest buffer; returns its size in bytes.
    fn drop_oldest(&mut self) -> usize;
}

impl<T: 'static> AnyShelf for Shelf<T> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn oldest(&self) -> Option<u64> {
        self.free.first().map(|c| c.returned)
    }

    fn drop_oldest(&mut self) -> usize {
        if self.free.is_empty() {
            return 0;
        }
        bytes_of::<T>(self.free.remove(0).buf.capacity())
    }
}

/// One thread's cache: a shelf per element type, and the counters.
struct Pool {
    shelves: Vec<(TypeId, Box<dyn AnyShelf>)>,
    clock: u64,
    stats: BrotliPoolStats,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            shelves: Vec::new(),
            clock: 0,
            stats: BrotliPoolStats {
                fresh: 0,
                fresh_bytes: 0,
                largest_fresh_bytes: 0,
                reused: 0,
                reused_bytes: 0,
                dropped: 0,
                cached_buffers: 0,
                cached_bytes: 0,
            },
        })
    };
}

/// Runs `f` on this thread's pool; `None` while the pool is borrowed or
/// being torn down (the caller then does without it).
fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> Option<R> {
    POOL.try_with(|cell| cell.try_borrow_mut().ok().map(|mut p| f(&mut p)))
        .ok()
        .flatten()
}

impl Pool {
    fn shelf<T: 'static>(&mut self) -> Option<&mut Shelf<T>> {
        let id = TypeId::of::<T>();
        let index = match self.shelves.iter().position(|(t, _)| *t == id) {
            Some(i) => i,
            None => {
                self.shelves
                    .push((id, Box::new(Shelf::<T> { free: Vec::new() })));
                self.shelves.len() - 1
            }
        };
        self.shelves[index].1.as_any_mut().downcast_mut()
    }

    /// The smallest cached buffer with room for `len` to `2 * len` elements
    /// (the most recently returned of equals), taken out of the cache.
    fn take<T: 'static>(&mut self, len: usize) -> Option<Vec<T>> {
        let shelf = self.shelf::<T>()?;
        let max = len.saturating_mul(2);
        let mut best: Option<(usize, usize)> = None;
        for (i, c) in shelf.free.iter().enumerate() {
            let have = c.buf.capacity();
            if (len..=max).contains(&have) && best.is_none_or(|(_, b)| have <= b) {
                best = Some((i, have));
            }
        }
        let (i, have) = best?;
        let buf = shelf.free.remove(i).buf;
        self.stats.cached_buffers -= 1;
        self.stats.cached_bytes -= bytes_of::<T>(have);
        self.stats.reused += 1;
        self.stats.reused_bytes += bytes_of::<T>(len) as u64;
        Some(buf)
    }

    fn note_fresh(&mut self, bytes: usize) {
        self.stats.fresh += 1;
        self.stats.fresh_bytes += bytes as u64;
        self.stats.largest_fresh_bytes = self.stats.largest_fresh_bytes.max(bytes as u64);
    }

    /// Caches `buf`, first dropping the oldest buffers if it would not fit.
    fn give_back<T: 'static>(&mut self, buf: Vec<T>) {
        let bytes = bytes_of::<T>(buf.capacity());
        if bytes > MAX_CACHED_BYTES {
            self.stats.dropped += 1;
            return;
        }
        while self.stats.cached_buffers >= MAX_CACHED_BUFFERS
            || self.stats.cached_bytes + bytes > MAX_CACHED_BYTES
        {
            if !self.drop_oldest() {
                break;
            }
        }
        let returned = self.clock;
        self.clock += 1;
        let Some(shelf) = self.shelf::<T>() else {
            return;
        };
        shelf.free.push(Cached { returned, buf });
        self.stats.cached_buffers += 1;
        self.stats.cached_bytes += bytes;
    }

    /// Drops the buffer returned longest ago; `false` if the cache is empty.
    fn drop_oldest(&mut self) -> bool {
        let oldest = self
            .shelves
            .iter_mut()
            .filter_map(|(_, s)| s.oldest().map(|t| (t, s)))
            .min_by_key(|(t, _)| *t);
        let Some((_, shelf)) = oldest else {
            return false;
        };
        let bytes = shelf.drop_oldest();
        self.stats.cached_buffers -= 1;
        self.stats.cached_bytes -= bytes;
        self.stats.dropped += 1;
        true
    }
}

/// Allocator for the brotli crates that recycles buffers through this
/// thread's pool. It holds only the size of the input it works on (see
/// [`HUGE_BYTES`]), so it is free to create per call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolAlloc {
    input_len: usize,
}

impl PoolAlloc {
    /// An allocator for compressing or decompressing `input_len` bytes.
    pub(crate) fn for_input(input_len: usize) -> Self {
        Self { input_len }
    }

    /// Whether a buffer of `bytes` goes through the pool.
    fn recycles(&self, bytes: usize) -> bool {
        bytes < HUGE_BYTES || bytes / HUGE_BYTES_PER_INPUT_BYTE <= self.input_len
    }
}

/// A buffer from [`PoolAlloc`]: exactly the elements the crate asked for,
/// in an allocation that may have room for more. A pooled one goes back to
/// the pool of the thread that drops it.
pub(crate) struct PoolBuf<T: 'static> {
    vec: Vec<T>,
    pooled: bool,
}

impl<T: 'static> Default for PoolBuf<T> {
    fn default() -> Self {
        // An empty vector does not allocate.
        Self {
            vec: Vec::new(),
            pooled: false,
        }
    }
}

impl<T: 'static> SliceWrapper<T> for PoolBuf<T> {
    fn slice(&self) -> &[T] {
        &self.vec
    }
}

impl<T: 'static> SliceWrapperMut<T> for PoolBuf<T> {
    fn slice_mut(&mut self) -> &mut [T] {
        &mut self.vec
    }
}

impl<T: 'static> Drop for PoolBuf<T> {
    fn drop(&mut self) {
        if !self.pooled {
            return;
        }
        let buf = std::mem::take(&mut self.vec);
        // Without a pool (thread teardown, re-entry) the buffer is just freed.
        let _ = with_pool(|pool| pool.give_back(buf));
    }
}

impl<T: Clone + Default + 'static> Allocator<T> for PoolAlloc {
    type AllocatedMemory = PoolBuf<T>;

    fn alloc_cell(&mut self, len: usize) -> PoolBuf<T> {
        let bytes = bytes_of::<T>(len);
        if bytes == 0 {
            // Nothing to allocate (or zero-sized elements).
            return PoolBuf {
                vec: vec![T::default(); len],
                pooled: false,
            };
        }
        if !self.recycles(bytes) {
            let _ = with_pool(|pool| pool.note_fresh(bytes));
            return PoolBuf {
                vec: vec![T::default(); len],
                pooled: false,
            };
        }
        let class = size_class(len);
        let cached = with_pool(|pool| {
            let buf = pool.take::<T>(len);
            if buf.is_none() {
                pool.note_fresh(bytes_of::<T>(class));
            }
            buf
        })
        .flatten();
        let vec = match cached {
            Some(mut vec) => {
                // What a new buffer holds: the crates' own allocator returns
                // default-filled memory, and they rely on it.
                vec.clear();
                vec.resize(len, T::default());
                vec
            }
            None => {
                // Filled to the whole class like the crates' allocator would
                // (zeroed pages straight from the system for plain numbers).
                let mut vec = vec![T::default(); class];
                vec.truncate(len);
                vec
            }
        };
        PoolBuf { vec, pooled: true }
    }

    fn free_cell(&mut self, data: PoolBuf<T>) {
        drop(data);
    }
}

impl brotli::enc::BrotliAlloc for PoolAlloc {}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> BrotliPoolStats {
        brotli_pool_stats()
    }

    /// Runs `f` on a new thread, whose pool starts empty.
    fn fresh_thread(f: impl FnOnce() + Send) {
        std::thread::scope(|s| s.spawn(f).join().unwrap());
    }

    #[test]
    fn size_classes_round_up_by_less_than_an_eighth() {
        assert_eq!(size_class(1), 1);
        assert_eq!(size_class(15), 15);
        assert_eq!(size_class(16), 16);
        assert_eq!(size_class(17), 18);
        assert_eq!(size_class(1000), 1024);
        assert_eq!(size_class(65536), 65536);
        assert_eq!(size_class(65537), 65536 + 8192);
        for len in (1..100_000).step_by(7) {
            let class = size_class(len);
            assert!(class >= len && class - len <= len / 8, "{len} -> {class}");
        }
        assert_eq!(size_class(usize::MAX), usize::MAX);
    }

    #[test]
    fn buffers_are_recycled_and_reset() {
        fresh_thread(|| {
            let mut a = PoolAlloc::for_input(4096);
            let mut buf: PoolBuf<u32> = a.alloc_cell(1000);
            assert_eq!(buf.slice().len(), 1000);
            assert_eq!((stats().fresh, stats().fresh_bytes), (1, 4096));
            buf.slice_mut().fill(7);
            a.free_cell(buf);
            assert_eq!((stats().cached_buffers, stats().cached_bytes), (1, 4096));

            // Same type, a length it holds: the same buffer, zeroed again.
            let again: PoolBuf<u32> = a.alloc_cell(990);
            assert_eq!(again.slice(), &[0; 990][..]);
            let s = stats();
            assert_eq!((s.fresh, s.reused, s.cached_buffers), (1, 1, 0));

            // Another element type is another buffer, and so is a request
            // the cached one cannot hold or would hold twice over.
            drop(again);
            let bytes: PoolBuf<u8> = a.alloc_cell(4000);
            let longer: PoolBuf<u32> = a.alloc_cell(1025);
            let shorter: PoolBuf<u32> = a.alloc_cell(400);
            assert_eq!(stats().fresh, 4);
            drop((bytes, longer, shorter));
            assert_eq!(stats().cached_buffers, 4);

            // The smallest buffer that holds the request is taken.
            let mid: PoolBuf<u32> = a.alloc_cell(600);
            assert_eq!(mid.vec.capacity(), 1024);
            assert_eq!(stats().reused, 2);

            let empty: PoolBuf<u64> = a.alloc_cell(0);
            assert!(empty.slice().is_empty());
            assert_eq!(stats().fresh, 4);
        });
    }

    #[test]
    fn the_cache_is_bounded() {
        fresh_thread(|| {
            let mut a = PoolAlloc::for_input(4096);
            // More buffers than the count bound: the oldest are dropped.
            // (Lengths 1..=16 are their own size class, so they are 16
            // buffers no other request of this loop can take.)
            let bufs: Vec<PoolBuf<[u8; 3]>> = (0..MAX_CACHED_BUFFERS + 10)
                .map(|i| a.alloc_cell(1 + i % 16))
                .collect();
            drop(bufs);
            let s = stats();
            assert_eq!(s.cached_buffers, MAX_CACHED_BUFFERS);
            assert_eq!(s.dropped, 10);

            // Bytes: two buffers of 3/4 of the bound never sit in the cache
            // together.
            let mut a = PoolAlloc::for_input(usize::MAX);
            let big = MAX_CACHED_BYTES / 4 * 3;
            let (x, y): (PoolBuf<u8>, PoolBuf<u8>) = (a.alloc_cell(big), a.alloc_cell(big));
            drop((x, y));
            let s = stats();
            assert!(s.cached_bytes <= MAX_CACHED_BYTES);
            assert_eq!(s.cached_buffers, 1);

            // Over the bound: never cached.
            let huge: PoolBuf<u8> = a.alloc_cell(MAX_CACHED_BYTES + 1);
            drop(huge);
            let after = stats();
            assert_eq!(after.dropped, s.dropped + 1);
            assert_eq!(after.cached_bytes, s.cached_bytes);
        });
    }

    #[test]
    fn huge_buffers_are_recycled_only_for_inputs_that_fill_them() {
        fresh_thread(|| {
            let len = HUGE_BYTES / 4;
            let needed = HUGE_BYTES / HUGE_BYTES_PER_INPUT_BYTE;
            let mut small = PoolAlloc::for_input(needed - 1);
            let buf: PoolBuf<u32> = small.alloc_cell(len);
            drop(buf);
            assert_eq!((stats().fresh, stats().cached_buffers), (1, 0));

            let mut large = PoolAlloc::for_input(needed);
            let buf: PoolBuf<u32> = large.alloc_cell(len);
            drop(buf);
            let buf: PoolBuf<u32> = large.alloc_cell(len);
            assert_eq!((stats().fresh, stats().reused), (2, 1));
            drop(buf);
            // Just under the huge size: recycled whatever the input.
            let mut tiny = PoolAlloc::for_input(1);
            let buf: PoolBuf<u8> = tiny.alloc_cell(HUGE_BYTES - 1);
            drop(buf);
            let buf: PoolBuf<u8> = tiny.alloc_cell(HUGE_BYTES - 1);
            assert_eq!(stats().reused, 2);
            drop(buf);
        });
    }
}
