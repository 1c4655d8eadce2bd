//! Property tests for the fixed-size table entries: L1, L2 (standard and
//! extended), compressed descriptors and refcount structures.
//!
//! Two directions for each: bytes a decoder accepts re-encode to the same
//! bytes, and values an encoder accepts decode to the same value. Arbitrary
//! input never panics.

use arbitrary::{Result, Unstructured};
use arbtest::arbtest;
use qcow2_format::tables::compressed::{self, CompressedDescriptor};
use qcow2_format::tables::l2::{self, HostCluster, L2Context, L2Mapping};
use qcow2_format::tables::l2_extended::{self, ExtendedL2Mapping, SUBCLUSTERS};
use qcow2_format::tables::refcount::{self, RefcountBlock, RefcountOrder, RefcountTableEntry};
use qcow2_format::tables::{l1, L1Entry};
use qcow2_format::{ClusterGeometry, HostOffset};

fn geometry(u: &mut Unstructured<'_>) -> Result<ClusterGeometry> {
    Ok(ClusterGeometry::new(u.int_in_range(9..=21)?).unwrap_or(ClusterGeometry::new(16).unwrap()))
}

fn l2_context(u: &mut Unstructured<'_>) -> Result<L2Context> {
    Ok(L2Context {
        geometry: geometry(u)?,
        version: u.int_in_range(2..=3)?,
        external_data_file: u.ratio(1, 8)?,
    })
}

/// A raw u64 biased towards the interesting bits (flags, small offsets).
fn raw_entry(u: &mut Unstructured<'_>) -> Result<u64> {
    let flags = u64::from(u.int_in_range(0u8..=3)?) << 62;
    let body = match u.int_in_range(0..=3)? {
        0 => u.arbitrary::<u64>()?,
        1 => u.arbitrary::<u64>()? & 0x00ff_ffff_ffff_fe00,
        2 => u64::from(u.arbitrary::<u32>()?) << 9,
        _ => u64::from(u.arbitrary::<u8>()? & 1),
    };
    Ok(flags | (body & !(3 << 62)))
}

/// A host cluster offset valid for `g`: aligned, below 2^56, non-zero.
fn cluster_offset(u: &mut Unstructured<'_>, g: ClusterGeometry) -> Result<HostOffset> {
    let max_cluster = ((1u64 << 56) >> g.cluster_bits()) - 1;
    Ok(HostOffset(
        u.int_in_range(1..=max_cluster)? << g.cluster_bits(),
    ))
}

fn host_cluster(u: &mut Unstructured<'_>, ctx: &L2Context) -> Result<HostCluster> {
    if ctx.external_data_file && u.ratio(1, 4)? {
        return Ok(HostCluster {
            offset: HostOffset(0),
            copied: true,
        });
    }
    Ok(HostCluster {
        offset: cluster_offset(u, ctx.geometry)?,
        copied: u.arbitrary()?,
    })
}

fn compressed_descriptor(
    u: &mut Unstructured<'_>,
    g: ClusterGeometry,
) -> Result<CompressedDescriptor> {
    Ok(CompressedDescriptor {
        host_offset: HostOffset(u.int_in_range(0..=compressed::max_host_offset(g))?),
        additional_sectors: u.int_in_range(0..=compressed::max_additional_sectors(g))?,
    })
}

fn l2_mapping(u: &mut Unstructured<'_>, ctx: &L2Context) -> Result<L2Mapping> {
    let kinds = if ctx.version >= 3 { 4 } else { 3 };
    Ok(match u.int_in_range(0..=kinds - 1)? {
        0 => L2Mapping::Unallocated,
        1 if ctx.external_data_file => L2Mapping::Unallocated,
        1 => L2Mapping::Compressed(compressed_descriptor(u, ctx.geometry)?),
        2 => L2Mapping::Data(host_cluster(u, ctx)?),
        _ => L2Mapping::Zero {
            preallocated: if u.arbitrary()? {
                Some(host_cluster(u, ctx)?)
            } else {
                None
            },
        },
    })
}

fn extended_mapping(u: &mut Unstructured<'_>, ctx: &L2Context) -> Result<ExtendedL2Mapping> {
    Ok(match u.int_in_range(0..=2)? {
        0 => ExtendedL2Mapping::Unallocated {
            zero: u.arbitrary()?,
        },
        1 if !ctx.external_data_file => {
            ExtendedL2Mapping::Compressed(compressed_descriptor(u, ctx.geometry)?)
        }
        _ => {
            let allocated: u32 = u.arbitrary()?;
            ExtendedL2Mapping::Allocated {
                host: host_cluster(u, ctx)?,
                allocated,
                zero: u.arbitrary::<u32>()? & !allocated,
            }
        }
    })
}

#[test]
fn l1_bytes_round_trip() {
    arbtest(|u| {
        let g = geometry(u)?;
        let raw = raw_entry(u)?;
        if let Ok(entry) = L1Entry::decode(raw, g, 0) {
            assert_eq!(entry.encode(g).ok(), Some(raw));
        }
        Ok(())
    });
}

#[test]
fn l1_values_round_trip() {
    arbtest(|u| {
        let g = geometry(u)?;
        let entry = if u.arbitrary()? {
            L1Entry {
                l2_table: Some(cluster_offset(u, g)?),
                copied: u.arbitrary()?,
            }
        } else {
            L1Entry::UNUSED
        };
        let raw = entry.encode(g).expect("valid L1 entry");
        assert_eq!(L1Entry::decode(raw, g, 0).ok(), Some(entry));
        // Arbitrary values: whatever encodes must decode back.
        let any = L1Entry {
            l2_table: u.arbitrary::<Option<u64>>()?.map(HostOffset),
            copied: u.arbitrary()?,
        };
        if let Ok(raw) = any.encode(g) {
            assert_eq!(L1Entry::decode(raw, g, 0).ok(), Some(any));
        }
        Ok(())
    });
}

#[test]
fn l1_table_never_panics() {
    arbtest(|u| {
        let g = geometry(u)?;
        let buf: Vec<u8> = u.arbitrary()?;
        let index = u.arbitrary()?;
        if let Ok(table) = l1::decode_table(&buf, g, u.arbitrary()?) {
            assert_eq!(l1::encode_table(&table, g).ok(), Some(buf.clone()));
        }
        let _ = l1::decode_at(&buf, index, g, u.arbitrary()?);
        Ok(())
    });
}

#[test]
fn l2_bytes_round_trip() {
    arbtest(|u| {
        let ctx = l2_context(u)?;
        let raw = raw_entry(u)?;
        if let Ok(mapping) = L2Mapping::decode(raw, &ctx, 0) {
            assert_eq!(mapping.encode(&ctx).ok(), Some(raw), "{mapping:?}");
        }
        Ok(())
    });
}

#[test]
fn l2_values_round_trip() {
    arbtest(|u| {
        let ctx = l2_context(u)?;
        let mapping = l2_mapping(u, &ctx)?;
        let raw = mapping.encode(&ctx).expect("valid L2 mapping");
        assert_eq!(L2Mapping::decode(raw, &ctx, 0).ok(), Some(mapping));
        Ok(())
    });
}

#[test]
fn l2_table_never_panics() {
    arbtest(|u| {
        let ctx = l2_context(u)?;
        let buf: Vec<u8> = u.arbitrary()?;
        if let Ok(table) = l2::decode_table(&buf, &ctx, u.arbitrary()?) {
            assert_eq!(l2::encode_table(&table, &ctx).ok(), Some(buf.clone()));
        }
        if let Ok(table) = l2_extended::decode_table(&buf, &ctx, u.arbitrary()?) {
            // Equal up to the ignored bit 0 of standard descriptors.
            let again = l2_extended::encode_table(&table, &ctx).expect("decoded entries encode");
            assert_eq!(l2_extended::decode_table(&again, &ctx, 0).ok(), Some(table));
        }
        let index = u.arbitrary()?;
        let _ = l2::decode_at(&buf, index, &ctx, u.arbitrary()?);
        let _ = l2_extended::decode_at(&buf, index, &ctx, u.arbitrary()?);
        Ok(())
    });
}

#[test]
fn extended_bytes_round_trip() {
    arbtest(|u| {
        let ctx = l2_context(u)?;
        let descriptor = raw_entry(u)?;
        let bitmap = match u.int_in_range(0..=2)? {
            0 => 0,
            1 => u64::from(u.arbitrary::<u32>()?) << (u.int_in_range(0..=1)? * 32),
            _ => u.arbitrary()?,
        };
        if let Ok(mapping) = ExtendedL2Mapping::decode(descriptor, bitmap, &ctx, 0) {
            // Bit 0 of a standard descriptor is ignored and rewritten as 0.
            let expected = if descriptor & l2::L2_COMPRESSED == 0 {
                descriptor & !l2::L2_ZERO
            } else {
                descriptor
            };
            assert_eq!(mapping.encode(&ctx).ok(), Some((expected, bitmap)));
        }
        Ok(())
    });
}

#[test]
fn extended_values_round_trip_and_runs_cover_the_cluster() {
    arbtest(|u| {
        let ctx = l2_context(u)?;
        let mapping = extended_mapping(u, &ctx)?;
        let (descriptor, bitmap) = mapping.encode(&ctx).expect("valid extended mapping");
        assert_eq!(
            ExtendedL2Mapping::decode(descriptor, bitmap, &ctx, 0).ok(),
            Some(mapping)
        );
        // Runs tile the 32 subclusters and agree with per-subcluster lookups.
        let mut next = 0;
        while let Some((source, len)) = mapping.run_at(next, ctx.geometry) {
            assert!(len >= 1);
            for i in next..next + len {
                let single = mapping.subcluster(i, ctx.geometry);
                assert_eq!(
                    core::mem::discriminant(&single.unwrap()),
                    core::mem::discriminant(&source)
                );
            }
            next += len;
        }
        assert_eq!(next, SUBCLUSTERS);
        Ok(())
    });
}

#[test]
fn compressed_from_range_covers_the_data() {
    arbtest(|u| {
        let g = geometry(u)?;
        let offset = HostOffset(u.int_in_range(0..=compressed::max_host_offset(g))?);
        let len = u.int_in_range(0..=2 * g.cluster_size() + 1024)?;
        if let Ok(d) = CompressedDescriptor::from_range(offset, len, g) {
            assert!(d.max_len() >= len && d.max_len() < len + 512);
            let raw = d.encode(g).expect("from_range gives encodable descriptors");
            assert_eq!(CompressedDescriptor::decode(raw, g, 0).ok(), Some(d));
            let (first, count) = d.host_clusters(g).expect("no overflow below 2^56");
            assert_eq!(first, g.host_cluster(offset));
            assert!(count >= 1);
        } else {
            assert!(len == 0 || len > (compressed::max_additional_sectors(g) + 1) * 512 - 511);
        }
        Ok(())
    });
}

#[test]
fn compressed_values_round_trip() {
    arbtest(|u| {
        let g = geometry(u)?;
        let d = compressed_descriptor(u, g)?;
        let raw = d.encode(g).expect("valid descriptor");
        assert_eq!(CompressedDescriptor::decode(raw, g, 0).ok(), Some(d));
        assert_eq!(raw >> 62, 1, "bit 62 set, COPIED clear");
        Ok(())
    });
}

#[test]
fn refcount_table_round_trip() {
    arbtest(|u| {
        let g = geometry(u)?;
        let raw = raw_entry(u)?;
        if let Ok(entry) = RefcountTableEntry::decode(raw, g, 0) {
            assert_eq!(entry.encode(g).ok(), Some(raw));
        }
        let buf: Vec<u8> = u.arbitrary()?;
        if let Ok(table) = refcount::decode_table(&buf, g, 0) {
            assert_eq!(refcount::encode_table(&table, g).ok(), Some(buf.clone()));
        }
        let _ = refcount::decode_at(&buf, u.arbitrary()?, g, 0);
        Ok(())
    });
}

#[test]
fn refcount_block_matches_a_model() {
    arbtest(|u| {
        let order = RefcountOrder::new(u.int_in_range(0..=6)?).unwrap_or(RefcountOrder::DEFAULT);
        // Blocks are whole clusters, so a multiple of 8 bytes for every width.
        let len_bytes = 8 * u.int_in_range(0..=8usize)?;
        let original: Vec<u8> = (0..len_bytes)
            .map(|_| u.arbitrary())
            .collect::<Result<_>>()?;
        let mut buf = original.clone();
        let mut block = RefcountBlock::new(&mut buf, order, 0);
        let mut model: Vec<u64> = (0..block.len()).map(|i| block.get(i).unwrap()).collect();
        assert_eq!(model.len() as u64, (len_bytes as u64 * 8) >> order.get());
        for _ in 0..u.int_in_range(0..=32)? {
            let index = u.int_in_range(0..=block.len() + 1)?;
            let value = u.arbitrary::<u64>()? >> u.int_in_range(0..=63)?;
            let fits = value <= order.max_refcount() && index < block.len();
            assert_eq!(block.set(index, value).is_ok(), fits);
            if fits {
                model[index as usize] = value;
            }
            assert_eq!(block.iter().collect::<Vec<_>>(), model);
        }
        // Writing every value back into a zeroed buffer reproduces the bytes.
        let mut copy = vec![0u8; len_bytes];
        let mut rebuilt = RefcountBlock::new(&mut copy, order, 0);
        for (i, &v) in model.iter().enumerate() {
            rebuilt.set(i as u64, v).unwrap();
        }
        assert_eq!(copy, buf);
        Ok(())
    });
}
