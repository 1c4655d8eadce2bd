//! File names of the images in a backing chain, as `qemu-img map` names
//! them in its "File" column (backing names resolved against the directory
//! of the image that names them, textually).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qcow2_image::{resolve_backing_path, BackingMode, Image, OpenOptions};
use qcow2_io::FileStorage;

use crate::backing::full_backing_filename;
use crate::disk::Format;

/// Longest chain followed (a loop of backing files ends here).
const MAX_DEPTH: usize = 64;

/// Display names of the chain of `file` (depth 0 first). A link that cannot
/// be read ends the list; callers show an empty name beyond it.
pub fn chain_names(file: &Path, format: Format) -> Vec<String> {
    let mut names = vec![file.display().to_string()];
    if format == Format::Raw {
        return names;
    }
    let mut path: PathBuf = file.to_path_buf();
    while names.len() < MAX_DEPTH {
        let Some((backing, is_qcow2)) = backing_of(&path) else {
            break;
        };
        let display = full_backing_filename(&names[names.len() - 1], &backing);
        names.push(display);
        path = resolve_backing_path(&path, &backing);
        if !is_qcow2 {
            break;
        }
    }
    names
}

/// The backing name of the qcow2 image at `path`, and whether the backing
/// file is itself qcow2.
fn backing_of(path: &Path) -> Option<(String, bool)> {
    let storage = FileStorage::open(path, false).ok()?;
    let options = OpenOptions {
        writable: false,
        backing: BackingMode::Ignore,
    };
    let image = Image::open(Arc::new(storage), options).ok()?;
    let area = image.header_area();
    let name = String::from_utf8_lossy(area.backing_file.as_ref()?).into_owned();
    let is_qcow2 = match area.backing_format() {
        Some(f) => f == "qcow2",
        None => Format::probe(&resolve_backing_path(path, &name)).ok() == Some(Format::Qcow2),
    };
    Some((name, is_qcow2))
}
