//! Read plans: a guest range cut into pieces that each come from one place,
//! built under the metadata lock and carried out without it.

use std::sync::Arc;

use qcow2_codec::Codec;
use qcow2_format::tables::compressed::CompressedDescriptor;
use qcow2_format::tables::l2_extended::ExtendedL2Mapping;
use qcow2_io::Storage;

use crate::backing::BackingSource;
use crate::error::{ImageError, Result};
use crate::meta::Meta;

/// Where the bytes of one piece come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Zero,
    /// Zeros, with a host cluster kept allocated at this offset.
    ZeroAt(u64),
    /// The backing image at this guest offset (zeros without one).
    Backing(u64),
    /// Like `Backing`, inside a host cluster that is allocated for other
    /// subclusters (at this host offset).
    BackingAt(u64, u64),
    /// The image file at this host offset.
    Data(u64),
    /// Bytes from `skip` on of the cluster this descriptor decodes to.
    Compressed {
        descriptor: CompressedDescriptor,
        skip: u64,
    },
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Piece {
    pub len: u64,
    pub source: Source,
}

/// What carrying out a plan needs besides the buffer.
pub(crate) struct Readers<'a> {
    pub storage: &'a dyn Storage,
    pub backing: Option<&'a Arc<dyn BackingSource>>,
    pub codec: Option<&'a Arc<dyn Codec>>,
    pub cluster_size: u64,
}

fn push(plan: &mut Vec<Piece>, len: u64, source: Source) {
    if let Some(last) = plan.last_mut() {
        let merged = match (last.source, source) {
            (Source::Zero, Source::Zero) => true,
            (Source::ZeroAt(a), Source::ZeroAt(b)) => a + last.len == b,
            (Source::Backing(a), Source::Backing(b)) => a + last.len == b,
            (Source::BackingAt(a, x), Source::BackingAt(b, y)) => {
                a + last.len == b && x + last.len == y
            }
            (Source::Data(a), Source::Data(b)) => a + last.len == b,
            _ => false,
        };
        if merged {
            last.len += len;
            return;
        }
    }
    plan.push(Piece { len, source });
}

/// Source of the unit run starting `within` bytes into a cluster with
/// `mapping`, and how many bytes of it the run covers.
pub(crate) fn run_source(
    meta: &Meta,
    mapping: ExtendedL2Mapping,
    cluster_start: u64,
    within: u64,
) -> (Source, u64) {
    let layout = meta.layout;
    let cs = layout.cluster_size();
    if let ExtendedL2Mapping::Compressed(descriptor) = mapping {
        return (
            Source::Compressed {
                descriptor,
                skip: within,
            },
            cs - within,
        );
    }
    let us = layout.unit_size();
    let unit = (within / us) as u32;
    let kind = |u: u32| -> u8 {
        let b = 1u32 << u;
        match mapping {
            ExtendedL2Mapping::Allocated { allocated, .. } if allocated & b != 0 => 0,
            ExtendedL2Mapping::Allocated { zero, .. } | ExtendedL2Mapping::Unallocated { zero }
                if zero & b != 0 =>
            {
                1
            }
            _ => 2,
        }
    };
    let k = kind(unit);
    let mut end = unit + 1;
    while end < layout.units() && kind(end) == k {
        end += 1;
    }
    let len = u64::from(end) * us - within;
    let source = match (k, mapping) {
        (0, ExtendedL2Mapping::Allocated { host, .. }) => Source::Data(host.offset.get() + within),
        (1, ExtendedL2Mapping::Allocated { host, .. }) => {
            Source::ZeroAt(host.offset.get() + within)
        }
        (1, _) => Source::Zero,
        (_, ExtendedL2Mapping::Allocated { host, .. }) => {
            Source::BackingAt(cluster_start + within, host.offset.get() + within)
        }
        _ => Source::Backing(cluster_start + within),
    };
    (source, len)
}

/// Plans reading `len` bytes at guest `offset`.
pub(crate) fn plan(
    meta: &mut Meta,
    storage: &dyn Storage,
    offset: u64,
    len: u64,
) -> Result<Vec<Piece>> {
    let cs = meta.layout.cluster_size();
    let mut plan = Vec::new();
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let cluster = pos / cs;
        let mapping = meta.mapping(storage, cluster)?;
        let mut within = pos % cs;
        while within < cs && pos < end {
            let (source, run) = run_source(meta, mapping, cluster * cs, within);
            let take = run.min(end - pos);
            push(&mut plan, take, source);
            pos += take;
            within += take;
        }
    }
    Ok(plan)
}

/// Carries out `plan` into `buf`.
pub(crate) fn execute(plan: &[Piece], buf: &mut [u8], readers: &Readers<'_>) -> Result<()> {
    let mut at = 0usize;
    let mut scratch: Vec<u8> = Vec::new();
    for piece in plan {
        let out = &mut buf[at..at + piece.len as usize];
        match piece.source {
            Source::Zero | Source::ZeroAt(_) => out.fill(0),
            Source::Backing(guest) | Source::BackingAt(guest, _) => match readers.backing {
                Some(backing) => backing.read_at(out, guest)?,
                None => out.fill(0),
            },
            Source::Data(host) => readers
                .storage
                .read_at(out, host)
                .map_err(|e| ImageError::io("reading guest data", host, e))?,
            Source::Compressed { descriptor, skip } => {
                scratch.resize(readers.cluster_size as usize, 0);
                decompress(readers, descriptor, &mut scratch)?;
                out.copy_from_slice(&scratch[skip as usize..skip as usize + out.len()]);
            }
        }
        at += piece.len as usize;
    }
    Ok(())
}

/// Decodes one compressed cluster into `cluster`.
pub(crate) fn decompress(
    readers: &Readers<'_>,
    descriptor: CompressedDescriptor,
    cluster: &mut [u8],
) -> Result<()> {
    let offset = descriptor.host_offset.get();
    let codec = readers.codec.ok_or_else(|| ImageError::Unsupported {
        what: "compressed clusters with an unknown compression format".into(),
    })?;
    // The descriptor bounds the length (at most about two clusters).
    let mut input = vec![0u8; descriptor.max_len() as usize];
    readers
        .storage
        .read_at(&mut input, offset)
        .map_err(|e| ImageError::io("reading a compressed cluster", offset, e))?;
    codec
        .decompress(&input, cluster)
        .map_err(|source| ImageError::Codec { offset, source })
}
