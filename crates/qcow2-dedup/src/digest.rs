//! SHA-256 of whole clusters.

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// The SHA-256 of `cluster` (the full, uncompressed cluster content).
pub fn hash_cluster(cluster: &[u8]) -> Digest {
    Sha256::digest(cluster).into()
}

/// Digests of every `cluster_size` chunk of `data` on all cores, `None` for
/// chunks that are all zero (zero clusters are never indexed). A short last
/// chunk is hashed as it is.
pub fn hash_clusters(data: &[u8], cluster_size: usize) -> Vec<Option<Digest>> {
    data.par_chunks(cluster_size.max(1))
        .map(|c| (!is_zero(c)).then(|| hash_cluster(c)))
        .collect()
}

/// Whether every byte is zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    let (words, rest) = bytes.split_at(bytes.len() - bytes.len() % 8);
    words
        .chunks_exact(8)
        .all(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0)
        && rest.iter().all(|&b| b == 0)
}

/// The SHA-256 implementation the `sha2` crate picks on this CPU at run
/// time: `"x86 SHA-NI"`, `"aarch64 SHA2"` or `"portable"`.
pub fn sha256_backend() -> &'static str {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        // sha2 uses its SHA-NI path when these three are present.
        if std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse2")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1")
        {
            return "x86 SHA-NI";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("sha2") {
            return "aarch64 SHA2";
        }
    }
    "portable"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // FIPS 180-2 test vector "abc".
        let d = hash_cluster(b"abc");
        assert_eq!(d[..8], [0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea]);
    }

    #[test]
    fn zero_chunks_have_no_digest() {
        let mut data = vec![0u8; 4096 * 3];
        data[4096 + 5] = 1;
        let d = hash_clusters(&data, 4096);
        assert_eq!(d.len(), 3);
        assert!(d[0].is_none() && d[2].is_none());
        assert_eq!(d[1], Some(hash_cluster(&data[4096..8192])));
    }
}

#[cfg(test)]
mod backend_tests {
    use super::*;

    #[test]
    fn reports_the_accelerated_backend_where_the_cpu_has_one() {
        let backend = sha256_backend();
        eprintln!("SHA-256 backend: {backend}");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            backend == "x86 SHA-NI",
            std::arch::is_x86_feature_detected!("sha"),
            "{backend}"
        );
        // Whatever the backend, results agree with the reference vector.
        assert_eq!(hash_cluster(b"")[..4], [0xe3, 0xb0, 0xc4, 0x42]);
    }
}
