//! Brotli takes its per-cluster working state from a per-thread buffer pool:
//! once a thread has handled clusters of a given size and level, the next
//! ones reuse the pooled buffers instead of allocating new ones.
//!
//! How this is observed: the workspace sets `unsafe_code = "forbid"`, and a
//! `forbid` cannot be relaxed by an `allow` in a test file, so a counting
//! `#[global_allocator]` (it needs `unsafe impl GlobalAlloc`) cannot be
//! written here. Instead the tests read the pool's own per-thread counters
//! (`brotli_pool_stats`). Every buffer the brotli encoder and decoder use
//! (hash tables, ring buffers, command and histogram arrays, Huffman tables)
//! is requested through the allocator hook the pool implements, and each
//! request is counted either as served from the pool or as a fresh
//! allocation from the global allocator.

mod common;

use brotli::enc::encode::{
    BrotliEncoderOperation, BrotliEncoderParameter, BrotliEncoderStateStruct,
};
use brotli::enc::StandardAlloc;
use common::{cluster, cut, source, Kind};
use qcow2_codec::{brotli_pool_stats, BrotliPoolStats, Codec, CompressOutcome, Registry};

/// Buffers from this size on are left to the system allocator for small
/// inputs (see `HUGE_BYTES` in `src/pool.rs`).
const HUGE_BYTES: u64 = 32 << 20;

/// Compresses and decompresses `data`; returns the stream (`None`: no gain).
fn round_trip(codec: &dyn Codec, data: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0; data.len()];
    let len = match codec.compress(data, &mut out).unwrap() {
        CompressOutcome::Compressed(len) => len,
        CompressOutcome::NoGain => return None,
    };
    out.truncate(len);
    let mut back = vec![0; data.len()];
    codec.decompress(&out, &mut back).unwrap();
    assert!(back == data, "{codec:?}: round trip differs");
    Some(out)
}

/// One cluster of each kind, then `more` further text and machine-code
/// clusters, all different.
fn mixed_clusters(len: usize, more: usize) -> Vec<Vec<u8>> {
    let (text, binary) = (source(Kind::Text), source(Kind::Binary));
    let mut out = vec![
        cut(&text, len, 0),
        cut(&binary, len, 0),
        cluster(Kind::Zeros, len),
        cluster(Kind::Random, len),
    ];
    for i in 1..=more.div_ceil(2) {
        out.push(cut(&text, len, i));
        out.push(cut(&binary, len, i));
    }
    out.truncate(4 + more);
    out
}

/// Runs `f` on a new thread, whose pool starts empty.
fn on_fresh_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

/// Counter changes from `before` to `after`.
struct Delta {
    fresh: u64,
    fresh_bytes: u64,
    reused: u64,
    reused_bytes: u64,
}

fn delta(before: BrotliPoolStats, after: BrotliPoolStats) -> Delta {
    Delta {
        fresh: after.fresh - before.fresh,
        fresh_bytes: after.fresh_bytes - before.fresh_bytes,
        reused: after.reused - before.reused,
        reused_bytes: after.reused_bytes - before.reused_bytes,
    }
}

#[test]
fn a_warm_thread_allocates_nothing_for_clusters_it_has_seen() {
    // (cluster size, level byte): 0 is the default level (6).
    let cases = [
        (512, 0),
        (4096, 1),
        (4096, 0),
        (65536, 1),
        (65536, 0),
        (65536, 8),
        (512 * 1024, 0),
    ];
    for (size, level) in cases {
        on_fresh_thread(|| {
            let codec = Registry::builtin().by_name("brotli", level).unwrap();
            let clusters = mixed_clusters(size, 4);
            let first: Vec<_> = clusters
                .iter()
                .map(|c| round_trip(codec.as_ref(), c))
                .collect();
            let warm = brotli_pool_stats();
            assert!(warm.fresh > 0 && warm.cached_buffers > 0);

            for _ in 0..2 {
                for (c, stream) in clusters.iter().zip(&first) {
                    // Recycled buffers behave like new ones: same stream.
                    assert!(
                        round_trip(codec.as_ref(), c) == *stream,
                        "{codec:?} x {size}"
                    );
                }
            }
            let d = delta(warm, brotli_pool_stats());
            assert_eq!(
                (d.fresh, d.fresh_bytes),
                (0, 0),
                "{codec:?} x {size}: allocations after warm-up"
            );
            // Every cluster (compress and decompress) took buffers from the
            // pool.
            assert!(d.reused >= 2 * 2 * clusters.len() as u64, "{codec:?}");
        });
    }
}

#[test]
fn only_huge_tables_for_small_inputs_bypass_the_pool() {
    // Level 10 is quality 9, whose hasher table is 32 MiB whatever the input.
    // For a 4 KiB cluster the pool leaves it to the system allocator (fresh,
    // lazily zeroed pages are cheaper there than re-zeroing 32 MiB), and
    // nothing else is allocated once the thread is warm.
    on_fresh_thread(|| {
        let codec = Registry::builtin().by_name("brotli", 10).unwrap();
        let clusters = mixed_clusters(4096, 2);
        for c in &clusters {
            round_trip(codec.as_ref(), c);
        }
        let warm = brotli_pool_stats();
        for c in &clusters {
            round_trip(codec.as_ref(), c);
        }
        let d = delta(warm, brotli_pool_stats());
        assert!(d.fresh >= clusters.len() as u64, "one table per cluster");
        assert!(
            d.fresh_bytes >= d.fresh * HUGE_BYTES,
            "{} fresh allocations, {} bytes: not all huge",
            d.fresh,
            d.fresh_bytes
        );
        assert!(d.reused > 0);
    });
}

#[test]
fn new_clusters_do_not_reallocate_the_big_buffers() {
    // Warm up on one cluster of each kind, then compress and decompress new
    // clusters. Their hash tables and ring buffers (sized by cluster size and
    // level) must come from the pool; only tables whose size depends on the
    // data may occasionally grow past what the pool holds.
    for level in [1, 0, 8, 10] {
        on_fresh_thread(|| {
            let codec = Registry::builtin().by_name("brotli", level).unwrap();
            let clusters = mixed_clusters(65536, 12);
            for c in &clusters[..4] {
                round_trip(codec.as_ref(), c);
            }
            let warm = brotli_pool_stats();
            let largest = warm.largest_fresh_bytes;
            let mut fresh_bytes = 0;
            let mut reused_bytes = 0;
            for c in &clusters[4..] {
                let before = brotli_pool_stats();
                round_trip(codec.as_ref(), c);
                let d = delta(before, brotli_pool_stats());
                // Not even all new allocations together are as large as the
                // largest buffer (the hash table): it was reused.
                assert!(
                    d.fresh_bytes < largest,
                    "{codec:?}: {} bytes in {} new buffers, largest buffer {largest}",
                    d.fresh_bytes,
                    d.fresh
                );
                fresh_bytes += d.fresh_bytes;
                reused_bytes += d.reused_bytes;
            }
            let share = fresh_bytes as f64 / (fresh_bytes + reused_bytes) as f64;
            assert!(
                share < 0.05,
                "{codec:?}: {:.2}% of the bytes newly allocated",
                share * 100.0
            );
        });
    }
}

/// Brotli-encodes `data` at `quality` with the crate's own allocator and the
/// window the codec uses (the smallest covering `data`, at least 2^17 at
/// qualities 5 and 6).
fn encode_with_standard_alloc(data: &[u8], quality: u32) -> Option<Vec<u8>> {
    let mut lgwin = 10;
    while lgwin < 24 && (1usize << lgwin) - 16 < data.len() {
        lgwin += 1;
    }
    if (5..=6).contains(&quality) {
        lgwin = lgwin.max(17);
    }
    let mut enc = BrotliEncoderStateStruct::new(StandardAlloc::default());
    for (param, value) in [
        (BrotliEncoderParameter::BROTLI_PARAM_QUALITY, quality),
        (BrotliEncoderParameter::BROTLI_PARAM_LGWIN, lgwin),
        (
            BrotliEncoderParameter::BROTLI_PARAM_SIZE_HINT,
            data.len() as u32,
        ),
    ] {
        assert!(enc.set_parameter(param, value));
    }
    let mut out = vec![0; data.len() - 1];
    let (mut avail_in, mut in_pos) = (data.len(), 0);
    let (mut avail_out, mut out_pos) = (out.len(), 0);
    let mut total = None;
    loop {
        assert!(enc.compress_stream(
            BrotliEncoderOperation::BROTLI_OPERATION_FINISH,
            &mut avail_in,
            data,
            &mut in_pos,
            &mut avail_out,
            &mut out,
            &mut out_pos,
            &mut total,
            &mut |_, _, _, _| (),
        ));
        if enc.is_finished() {
            out.truncate(out_pos);
            return Some(out);
        }
        if avail_out == 0 {
            return None;
        }
    }
}

#[test]
fn recycled_buffers_give_the_same_streams_as_new_ones() {
    // A thread that has already compressed other data (so its pool holds
    // used buffers) produces exactly the stream the crate's own allocator
    // gives.
    for level in [1u8, 4, 6, 8, 10, 11] {
        on_fresh_thread(|| {
            let codec = Registry::builtin().by_name("brotli", level).unwrap();
            let quality = u32::from(level) - 1;
            for size in [4096, 65536] {
                for c in mixed_clusters(size, 2) {
                    let ours = round_trip(codec.as_ref(), &c);
                    assert!(
                        ours == encode_with_standard_alloc(&c, quality),
                        "{codec:?} x {size}: streams differ"
                    );
                }
            }
            assert!(brotli_pool_stats().reused > 0);
        });
    }
}
