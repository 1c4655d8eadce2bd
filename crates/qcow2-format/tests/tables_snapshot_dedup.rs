//! Property tests for the variable-length tables: snapshots and the dedup table.

use arbitrary::{Result, Unstructured};
use arbtest::arbtest;
use qcow2_format::tables::dedup_table::{self, DedupEntry, HASH_SIZE};
use qcow2_format::tables::snapshot::{self, SnapshotContext, SnapshotEntry};
use qcow2_format::{ClusterGeometry, GuestOffset, HostOffset};

fn geometry(u: &mut Unstructured<'_>) -> Result<ClusterGeometry> {
    Ok(ClusterGeometry::new(u.int_in_range(9..=21)?).unwrap_or(ClusterGeometry::new(16).unwrap()))
}

fn small_bytes(u: &mut Unstructured<'_>, max: usize) -> Result<Vec<u8>> {
    let len = u.int_in_range(0..=max)?;
    (0..len).map(|_| u.arbitrary()).collect()
}

fn snapshot_entry(u: &mut Unstructured<'_>, ctx: &SnapshotContext) -> Result<SnapshotEntry> {
    let min_extra = if ctx.version >= 3 { 16 } else { 0 };
    let mut extra_data = small_bytes(u, 40)?;
    extra_data.resize(extra_data.len().max(min_extra), 0);
    Ok(SnapshotEntry {
        l1_table_offset: HostOffset(u.int_in_range(0..=1u64 << 40)? << ctx.geometry.cluster_bits()),
        l1_size: u.int_in_range(0..=snapshot_l1_limit())?,
        date_sec: u.arbitrary()?,
        date_nsec: u.arbitrary()?,
        vm_clock_nsec: u.arbitrary()?,
        vm_state_size_32: u.arbitrary()?,
        extra_data,
        id: small_bytes(u, 12)?,
        name: small_bytes(u, 30)?,
    })
}

fn snapshot_l1_limit() -> u32 {
    qcow2_format::tables::l1::MAX_L1_ENTRIES as u32
}

fn snapshot_context(u: &mut Unstructured<'_>) -> Result<SnapshotContext> {
    Ok(SnapshotContext {
        geometry: geometry(u)?,
        version: u.int_in_range(2..=3)?,
    })
}

#[test]
fn snapshot_values_round_trip() {
    arbtest(|u| {
        let ctx = snapshot_context(u)?;
        let count = u.int_in_range(0..=6)?;
        let entries: Vec<SnapshotEntry> = (0..count)
            .map(|_| snapshot_entry(u, &ctx))
            .collect::<Result<_>>()?;
        let bytes = snapshot::encode_table(&entries, &ctx).expect("valid entries");
        assert_eq!(bytes.len() as u64, snapshot::table_len(&entries));
        let back = snapshot::parse_table(&bytes, count as u32, &ctx, 0).expect("own output");
        assert_eq!(back, entries);
        Ok(())
    });
}

/// Writes entries the way a foreign writer might: random padding bytes.
#[test]
fn snapshot_bytes_round_trip_up_to_padding() {
    arbtest(|u| {
        let ctx = snapshot_context(u)?;
        let count = u.int_in_range(0..=5)?;
        let mut bytes = Vec::new();
        let mut padding = Vec::new();
        for i in 0..count {
            let e = snapshot_entry(u, &ctx)?;
            let encoded = snapshot::encode_table(std::slice::from_ref(&e), &ctx).unwrap();
            bytes.extend_from_slice(&encoded);
            if i + 1 < count {
                while bytes.len() % 8 != 0 {
                    padding.push(bytes.len());
                    bytes.push(u.arbitrary()?);
                }
            }
        }
        let entries = snapshot::parse_table(&bytes, count, &ctx, 0).expect("well-formed table");
        let mut normalized = bytes.clone();
        for p in padding {
            normalized[p] = 0;
        }
        assert_eq!(
            snapshot::encode_table(&entries, &ctx).ok(),
            Some(normalized)
        );
        Ok(())
    });
}

#[test]
fn snapshot_parse_never_panics() {
    arbtest(|u| {
        let ctx = snapshot_context(u)?;
        let count = u.arbitrary()?;
        let buf: Vec<u8> = u.arbitrary()?;
        if let Ok(entries) = snapshot::parse_table(&buf, count, &ctx, u.arbitrary()?) {
            assert_eq!(entries.len(), count as usize);
            let out = snapshot::encode_table(&entries, &ctx).expect("parsed entries re-encode");
            assert!(out.len() <= buf.len());
        }
        Ok(())
    });
}

fn dedup_entry(u: &mut Unstructured<'_>, g: ClusterGeometry) -> Result<Option<DedupEntry>> {
    if u.ratio(1, 3)? {
        return Ok(None);
    }
    let mut hash = [0u8; HASH_SIZE];
    u.fill_buffer(&mut hash)?;
    hash[0] |= 1; // never all zero
    Ok(Some(DedupEntry {
        hash,
        guest_offset: GuestOffset(u.int_in_range(0..=1u64 << 40)? << g.cluster_bits()),
    }))
}

#[test]
fn dedup_values_round_trip() {
    arbtest(|u| {
        let g = geometry(u)?;
        let n = dedup_table::entries_per_l2(g) as usize;
        let count = u.int_in_range(0..=n.min(64))?;
        let entries: Vec<Option<DedupEntry>> = (0..count)
            .map(|_| dedup_entry(u, g))
            .collect::<Result<_>>()?;
        let cluster = dedup_table::encode_l2_cluster(&entries, g).expect("valid entries");
        let back = dedup_table::decode_l2_cluster(&cluster, g, 0).expect("own output");
        assert_eq!(&back[..count], &entries[..]);
        assert!(back[count..].iter().all(Option::is_none));
        // Bytes that decode re-encode to the same cluster.
        assert_eq!(dedup_table::encode_l2_cluster(&back, g).ok(), Some(cluster));
        let l1: Vec<Option<HostOffset>> = (0..u.int_in_range(0..=16)?)
            .map(|_| -> Result<_> {
                Ok(if u.arbitrary()? {
                    Some(HostOffset(
                        // Valid offsets stay below 2^56 (bits 56-63 are reserved).
                        u.int_in_range(1..=(1u64 << (56 - g.cluster_bits())) - 1)?
                            << g.cluster_bits(),
                    ))
                } else {
                    None
                })
            })
            .collect::<Result<_>>()?;
        let raw = dedup_table::encode_l1_table(&l1, g).expect("valid L1");
        assert_eq!(dedup_table::decode_l1_table(&raw, g, 0).ok(), Some(l1));
        Ok(())
    });
}

#[test]
fn dedup_decode_never_panics() {
    arbtest(|u| {
        let g = ClusterGeometry::new(9).unwrap();
        let mut buf: Vec<u8> = u.arbitrary()?;
        if u.arbitrary()? {
            buf.resize(512, 0);
        }
        if let Ok(entries) = dedup_table::decode_l2_cluster(&buf, g, u.arbitrary()?) {
            assert_eq!(
                dedup_table::encode_l2_cluster(&entries, g).ok(),
                Some(buf.clone())
            );
        }
        let _ = dedup_table::decode_l2_entry_at(&buf, u.arbitrary()?, g, 0);
        if let Ok(l1) = dedup_table::decode_l1_table(&buf, g, 0) {
            assert_eq!(dedup_table::encode_l1_table(&l1, g).ok(), Some(buf.clone()));
        }
        Ok(())
    });
}

/// `read_table` fetches about what the entries reach (reads double from
/// 64 KiB until every header is in), not the largest table allowed, and reports a table the
/// available bytes cut short as the parser does.
#[test]
fn snapshot_table_is_read_as_far_as_its_entries_reach() {
    let ctx = SnapshotContext {
        geometry: ClusterGeometry::new(16).unwrap(),
        version: 3,
    };
    let entries: Vec<SnapshotEntry> = (0..900u32)
        .map(|i| SnapshotEntry {
            l1_table_offset: HostOffset(u64::from(i + 1) << 16),
            l1_size: 1,
            extra_data: vec![0; 16],
            id: i.to_string().into_bytes(),
            name: vec![b'n'; 40 + (i % 50) as usize],
            ..Default::default()
        })
        .collect();
    let bytes = snapshot::encode_table(&entries, &ctx).unwrap();
    assert!(bytes.len() > 64 << 10, "the table needs more than one read");
    // The file holds junk after the table, and far more than it.
    let mut file = bytes.clone();
    file.resize(8 << 20, 0xa5);
    let mut reads = Vec::new();
    let got = snapshot::read_table(900, &ctx, 0, file.len() as u64, |len| {
        reads.push(len);
        Ok::<_, qcow2_format::FormatError>(file[..len as usize].to_vec())
    })
    .unwrap();
    assert_eq!(got, entries);
    assert!(reads.windows(2).all(|w| w[0] < w[1]), "{reads:?}");
    // Reads double until the headers are all in: never twice the table.
    let last = *reads.last().unwrap();
    assert!(
        last >= bytes.len() as u64 && last < 2 * bytes.len() as u64,
        "{reads:?}"
    );

    let short = bytes.len() as u64 - 10;
    let err = snapshot::read_table(900, &ctx, 0, short, |len| {
        Ok::<_, qcow2_format::FormatError>(file[..len as usize].to_vec())
    })
    .unwrap_err();
    assert_eq!(err.rule, qcow2_format::rules::SNAP_ENTRY, "{err}");
}
