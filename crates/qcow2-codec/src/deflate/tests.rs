//! Round trips through zlib-rs's inflater with QEMU's 4 KiB window.

use super::{Effort, Encoder};
use zlib_rs::{Inflate, InflateFlush, Status};

const EFFORTS: [Effort; 3] = [
    Effort {
        depth: 1,
        good: 4,
        lazy: 4,
        nice: 8,
    },
    Effort {
        depth: 32,
        good: 8,
        lazy: 16,
        nice: 128,
    },
    Effort {
        depth: 4096,
        good: 258,
        lazy: 258,
        nice: 258,
    },
];

fn inflate_4k(stream: &[u8], len: usize) -> Vec<u8> {
    let mut inflate = Inflate::new(false, 12);
    let mut out = vec![0; len + 16];
    let status = inflate
        .decompress(stream, &mut out, InflateFlush::Finish)
        .unwrap_or_else(|e| panic!("inflate: {e:?} {:?}", inflate.error_message()));
    assert_eq!(status, Status::StreamEnd);
    assert_eq!(
        inflate.total_in() as usize,
        stream.len(),
        "stream has trailing bytes"
    );
    out.truncate(inflate.total_out() as usize);
    out
}

fn round_trip(data: &[u8]) -> Option<usize> {
    let mut enc = Encoder::default();
    let mut best = None;
    for effort in EFFORTS {
        let mut out = vec![0; data.len() + 1024];
        let n = enc
            .compress(data, &mut out, effort)
            .expect("fits with slack");
        assert!(inflate_4k(&out[..n], data.len()) == data, "{effort:?}");
        best = Some(best.map_or(n, |b: usize| b.min(n)));
    }
    best
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn mixed(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        match rng.next() % 5 {
            0 => data.extend((0..rng.next() % 300).map(|_| rng.next() as u8)),
            1 => data.extend(std::iter::repeat_n(
                rng.next() as u8,
                (rng.next() % 600) as usize,
            )),
            2 if data.len() > 10 => {
                let back = 1 + (rng.next() as usize % data.len().min(6000));
                let n = (rng.next() % 400) as usize;
                for _ in 0..n {
                    data.push(data[data.len() - back]);
                }
            }
            _ => {
                let alphabet = 2 + rng.next() % 40;
                data.extend((0..rng.next() % 500).map(|_| b'a' + (rng.next() % alphabet) as u8));
            }
        }
    }
    data.truncate(len);
    data
}

#[test]
fn tiny_inputs_round_trip() {
    for len in 0..40 {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 5) as u8).collect();
        round_trip(&data);
    }
}

#[test]
fn runs_and_repeats_compress_well() {
    let zeros = vec![0u8; 65536];
    assert!(round_trip(&zeros).unwrap() < 200);
    let pattern: Vec<u8> = (0..65536).map(|i| (i % 251) as u8).collect();
    assert!(round_trip(&pattern).unwrap() < 2000);
}

#[test]
fn random_bytes_fall_back_to_stored_blocks() {
    let mut rng = Rng(99);
    let data: Vec<u8> = (0..200_000).map(|_| rng.next() as u8).collect();
    let n = round_trip(&data).unwrap();
    // Stored blocks: 5 bytes per block of symbols, a byte of padding.
    assert!(
        n <= data.len() + 5 * data.len().div_ceil(super::BLOCK_SYMBOLS) + 1,
        "{n}"
    );
}

#[test]
fn mixed_data_of_every_cluster_size_round_trips() {
    for (i, size) in [512usize, 4096, 65536, 2 << 20].into_iter().enumerate() {
        let data = mixed(size, 5 + i as u64);
        let n = round_trip(&data).unwrap();
        assert!(n < size, "size {size}: {n}");
    }
}

#[test]
fn a_small_buffer_reports_no_room() {
    let data = mixed(65536, 3);
    let mut enc = Encoder::default();
    let mut out = vec![0; 65536];
    let n = enc.compress(&data, &mut out, EFFORTS[1]).unwrap();
    for room in [0, 1, n / 2, n - 1] {
        assert_eq!(
            enc.compress(&data, &mut out[..room], EFFORTS[1]),
            None,
            "room {room}"
        );
    }
    assert_eq!(enc.compress(&data, &mut out[..n], EFFORTS[1]), Some(n));
    assert!(inflate_4k(&out[..n], data.len()) == data);
}

#[test]
fn the_same_input_gives_the_same_stream() {
    let data = mixed(65536, 11);
    let mut enc = Encoder::default();
    let mut a = vec![0; 70000];
    let mut b = vec![0; 70000];
    let n = enc.compress(&data, &mut a, EFFORTS[1]).unwrap();
    enc.compress(&mixed(65536, 12), &mut b, EFFORTS[1]).unwrap();
    let m = enc.compress(&data, &mut b, EFFORTS[1]).unwrap();
    assert_eq!(a[..n], b[..m]);
}

#[test]
fn static_blocks_code_high_bytes_right() {
    // Short inputs take the static code, whose 9-bit literals (144..=255)
    // depend on the two unused length symbols 286 and 287.
    for len in 1..64 {
        let data: Vec<u8> = (0..len).map(|i| 140 + (i * 13 % 116) as u8).collect();
        round_trip(&data);
    }
}

#[test]
fn state_left_by_large_clusters_does_not_leak_into_small_ones() {
    let mut enc = Encoder::default();
    let mut out = vec![0; 3 << 20];
    for (i, size) in [2 << 20, 512, 65536, 4096, 2 << 20, 1024]
        .into_iter()
        .enumerate()
    {
        let data = mixed(size, 40 + i as u64);
        let n = enc.compress(&data, &mut out, EFFORTS[1]).unwrap();
        assert!(inflate_4k(&out[..n], size) == data, "size {size}");
        let fresh = Encoder::default().compress(&data, &mut vec![0; 3 << 20], EFFORTS[1]);
        assert_eq!(
            fresh,
            Some(n),
            "size {size}: a fresh encoder gives the same length"
        );
    }
}
