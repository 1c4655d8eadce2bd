//! Resolving a backing file name the way QEMU does.
//!
//! A relative backing name is relative to the directory of the image that
//! names it, not to the current directory. QEMU builds the full name by
//! textual concatenation (it does not canonicalize), so `./dir/a.qcow2` with
//! backing `b.qcow2` resolves to `./dir/b.qcow2`; we do the same so that
//! `full-backing-filename` matches `qemu-img info`.

/// The backing file name as QEMU would open it, given the image's own path as typed.
pub fn full_backing_filename(image: &str, backing: &str) -> String {
    if backing.starts_with('/') || has_protocol(backing) {
        return backing.to_string();
    }
    match image.rfind('/') {
        Some(slash) => format!("{}{backing}", &image[..=slash]),
        None => backing.to_string(),
    }
}

/// Whether `name` starts with a `protocol:` prefix (a colon before any slash), e.g. `nbd:host:10809`.
fn has_protocol(name: &str) -> bool {
    name.find([':', '/'])
        .is_some_and(|i| name.as_bytes()[i] == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    // The integration tests compare real cases against qemu-img; these cover the branches.
    #[test]
    fn relative_names_follow_the_image_directory() {
        assert_eq!(full_backing_filename("a.qcow2", "b.qcow2"), "b.qcow2");
        assert_eq!(
            full_backing_filename("./d/a.qcow2", "b.qcow2"),
            "./d/b.qcow2"
        );
        assert_eq!(
            full_backing_filename("/x/a.qcow2", "../b.qcow2"),
            "/x/../b.qcow2"
        );
    }

    #[test]
    fn absolute_and_protocol_names_are_kept() {
        assert_eq!(full_backing_filename("d/a.qcow2", "/b.qcow2"), "/b.qcow2");
        assert_eq!(
            full_backing_filename("d/a.qcow2", "nbd:host:10809"),
            "nbd:host:10809"
        );
        assert_eq!(full_backing_filename("d/a.qcow2", "sub/x:y"), "d/sub/x:y");
    }
}
