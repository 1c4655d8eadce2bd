//! The errors a command can end with; each prints as one line.

use std::io;
use std::path::PathBuf;

use qcow2_format::FormatError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The file could not be opened or read.
    #[error("could not read '{}': {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The file breaks a qcow2 rule; the message names the rule ID and byte offset.
    #[error("'{}' is not a valid qcow2 image: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The violated rule, with its offset.
        source: FormatError,
    },
    /// A structure is larger than this tool reads in one piece.
    #[error("'{}': {what} is {size} bytes, more than the {limit} bytes this tool reads", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The structure.
        what: &'static str,
        /// Its size on disk.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Writing the output failed (other than a closed pipe, which ends quietly).
    #[error("could not write output: {0}")]
    Output(#[source] io::Error),
    /// The image engine refused or failed an operation on a file.
    #[error("'{}': {source}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// The engine's reason.
        source: qcow2_image::ImageError,
    },
    /// A command-line argument or option value is invalid.
    #[error("{0}")]
    Usage(String),
    /// The result cannot be shown in the requested output form.
    #[error("{0}")]
    Unrepresentable(&'static str),
    /// The option or feature is recognised but not implemented yet.
    #[error("{0} is not supported yet")]
    NotYet(&'static str),
}

impl CliError {
    /// Wraps an engine error about `path`.
    pub fn image(path: &std::path::Path, source: qcow2_image::ImageError) -> Self {
        Self::Image {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Wraps an I/O error about `path`.
    pub fn io(path: &std::path::Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
