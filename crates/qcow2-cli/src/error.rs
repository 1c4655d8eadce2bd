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
}
