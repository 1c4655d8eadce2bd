//! Block status: what backs each range of the guest disk, through the
//! backing chain (the data behind `qcow2 map`).

use std::sync::PoisonError;

use crate::error::Result;
use crate::image::Image;
use crate::plan::{self, Source};

/// How a guest range reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    /// Plain data at this offset of the file at `depth` (absent for raw
    /// backing files reached through a protocol without offsets).
    Data {
        /// Host offset in that file.
        offset: Option<u64>,
    },
    /// Compressed data (no plain host offset).
    Compressed,
    /// Reads as zeros, recorded as such in the image at `depth`.
    Zero {
        /// The host cluster kept allocated for it, if any.
        offset: Option<u64>,
    },
    /// Not allocated anywhere in the chain: reads as zeros.
    Unallocated {
        /// A host cluster of this image allocated for other subclusters
        /// that holds the range (extended L2), if any.
        offset: Option<u64>,
    },
}

/// One range of the guest disk with a uniform status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Index in the chain of the image that decides it: 0 is this image,
    /// 1 its backing file, and so on; for unallocated ranges, the chain
    /// length.
    pub depth: u32,
    /// How it reads.
    pub kind: ExtentKind,
}

/// Appends `extent`, merging it with the previous one when they continue
/// each other.
pub(crate) fn push_extent(out: &mut Vec<Extent>, extent: Extent) {
    if let Some(last) = out.last_mut() {
        let continues = last.depth == extent.depth
            && last.start + last.length == extent.start
            && match (last.kind, extent.kind) {
                (ExtentKind::Data { offset: Some(a) }, ExtentKind::Data { offset: Some(b) })
                | (ExtentKind::Zero { offset: Some(a) }, ExtentKind::Zero { offset: Some(b) })
                | (
                    ExtentKind::Unallocated { offset: Some(a) },
                    ExtentKind::Unallocated { offset: Some(b) },
                ) => a + last.length == b,
                (a, b) => a == b,
            };
        if continues {
            last.length += extent.length;
            return;
        }
    }
    out.push(extent);
}

impl Image {
    /// The status of `[offset, offset + len)`, clipped to the virtual size.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let _shared = self.io.read().unwrap_or_else(PoisonError::into_inner);
        let pieces = {
            let mut meta = self.lock_meta();
            let len = len.min(meta.size().saturating_sub(offset));
            plan::plan(&mut meta, &*self.storage, offset, len)?
        };
        let mut out = Vec::new();
        let mut pos = offset;
        for piece in pieces {
            let kind = match piece.source {
                Source::Zero => Some(ExtentKind::Zero { offset: None }),
                Source::ZeroAt(host) => Some(ExtentKind::Zero { offset: Some(host) }),
                Source::Data(host) => Some(ExtentKind::Data { offset: Some(host) }),
                Source::Compressed { .. } => Some(ExtentKind::Compressed),
                Source::Backing(_) | Source::BackingAt(..) => None,
            };
            match (kind, &self.backing) {
                (Some(kind), _) => push_extent(
                    &mut out,
                    Extent {
                        start: pos,
                        length: piece.len,
                        depth: 0,
                        kind,
                    },
                ),
                (None, Some(backing)) => {
                    let mut covered = 0;
                    for e in backing.block_status(pos, piece.len)? {
                        covered += e.length;
                        push_extent(
                            &mut out,
                            Extent {
                                depth: e.depth + 1,
                                ..e
                            },
                        );
                    }
                    // Past the end of a shorter backing file nothing is
                    // allocated anywhere; QEMU reports it at depth 0.
                    if covered < piece.len {
                        push_extent(
                            &mut out,
                            Extent {
                                start: pos + covered,
                                length: piece.len - covered,
                                depth: 0,
                                kind: ExtentKind::Unallocated { offset: None },
                            },
                        );
                    }
                }
                (None, None) => {
                    let offset = match piece.source {
                        Source::BackingAt(_, host) => Some(host),
                        _ => None,
                    };
                    push_extent(
                        &mut out,
                        Extent {
                            start: pos,
                            length: piece.len,
                            depth: 0,
                            kind: ExtentKind::Unallocated { offset },
                        },
                    )
                }
            }
            pos += piece.len;
        }
        Ok(out)
    }
}
