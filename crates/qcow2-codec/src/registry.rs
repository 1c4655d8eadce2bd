//! Look-up of codecs by seed format name and by QEMU `compression_type`.

use std::fmt;
use std::sync::Arc;

use crate::codec::Codec;
use crate::error::RegistryError;
use crate::level::LevelSpec;

/// Longest name the compress format extension can hold.
pub const MAX_NAME_LEN: usize = 16;

type BuildFn = dyn Fn(u8) -> Arc<dyn Codec> + Send + Sync;

/// A registrable codec: its name, optional QEMU `compression_type`, level
/// range, and a constructor for a given resolved level.
#[derive(Clone)]
pub struct CodecInfo {
    name: &'static str,
    qemu_type: Option<u8>,
    levels: LevelSpec,
    build: Arc<BuildFn>,
}

impl CodecInfo {
    /// Describes a codec for [`Registry::register`].
    ///
    /// `build` receives a level already resolved to `1..=levels.max()`.
    /// The name must be 1..=16 printable ASCII bytes (no spaces), so it fits
    /// the header extension's NUL-padded field.
    pub fn new(
        name: &'static str,
        levels: LevelSpec,
        build: impl Fn(u8) -> Arc<dyn Codec> + Send + Sync + 'static,
    ) -> Result<Self, RegistryError> {
        let valid =
            (1..=MAX_NAME_LEN).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(RegistryError::InvalidName {
                name: name.to_owned(),
            });
        }
        Ok(Self {
            name,
            qemu_type: None,
            levels,
            build: Arc::new(build),
        })
    }

    /// Built-in entries have constant, known-valid names.
    pub(crate) fn builtin(
        name: &'static str,
        qemu_type: Option<u8>,
        levels: LevelSpec,
        build: fn(u8) -> Arc<dyn Codec>,
    ) -> Self {
        Self {
            name,
            qemu_type,
            levels,
            build: Arc::new(build),
        }
    }

    /// Also answers to this QEMU `compression_type` header value.
    #[must_use]
    pub fn with_qemu_type(mut self, value: u8) -> Self {
        self.qemu_type = Some(value);
        self
    }

    /// Format name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// QEMU `compression_type` value, if the format has one.
    pub fn qemu_type(&self) -> Option<u8> {
        self.qemu_type
    }

    /// Level range and default.
    pub fn levels(&self) -> LevelSpec {
        self.levels
    }

    /// Builds the codec for header level byte `level` (0 = default).
    pub fn build(&self, level: u8) -> Result<Arc<dyn Codec>, RegistryError> {
        let level = self.levels.resolve(self.name, level)?;
        Ok((self.build)(level))
    }
}

impl fmt::Debug for CodecInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodecInfo")
            .field("name", &self.name)
            .field("qemu_type", &self.qemu_type)
            .field("levels", &self.levels)
            .finish_non_exhaustive()
    }
}

/// The set of codecs an image may use.
///
/// [`Registry::builtin`] (also [`Default`]) holds `zlib` (QEMU type 0),
/// `zstd` (QEMU type 1) and `brotli`; a downstream crate adds its own with
/// [`Registry::register`].
#[derive(Debug, Clone)]
pub struct Registry {
    codecs: Vec<CodecInfo>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    /// A registry with no codecs.
    pub fn empty() -> Self {
        Self { codecs: Vec::new() }
    }

    /// A registry with the built-in codecs: `zlib`, `zstd`, `brotli`.
    pub fn builtin() -> Self {
        Self {
            codecs: vec![
                crate::zlib::registration(),
                crate::zstd::registration(),
                crate::brotli::registration(),
            ],
        }
    }

    /// Adds a codec. Names and QEMU types must be unique.
    pub fn register(&mut self, info: CodecInfo) -> Result<(), RegistryError> {
        if self.codecs.iter().any(|c| c.name == info.name) {
            return Err(RegistryError::DuplicateName {
                name: info.name.to_owned(),
            });
        }
        if let Some(value) = info.qemu_type {
            if let Some(existing) = self.codecs.iter().find(|c| c.qemu_type == Some(value)) {
                return Err(RegistryError::DuplicateQemuType {
                    value,
                    existing: existing.name.to_owned(),
                });
            }
        }
        self.codecs.push(info);
        Ok(())
    }

    /// Registered codecs, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &CodecInfo> {
        self.codecs.iter()
    }

    /// The entry for a format name (exact, case-sensitive match).
    pub fn info(&self, name: &str) -> Result<&CodecInfo, RegistryError> {
        self.codecs
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| RegistryError::UnknownName {
                name: name.to_owned(),
                known: self.known_names(),
            })
    }

    /// The codec for a compress format extension: format name and level byte
    /// (0 = the codec's default).
    pub fn by_name(&self, name: &str, level: u8) -> Result<Arc<dyn Codec>, RegistryError> {
        self.info(name)?.build(level)
    }

    /// The codec for a QEMU `compression_type` header value, at its default
    /// level (QEMU images do not record a level).
    pub fn by_qemu_type(&self, value: u8) -> Result<Arc<dyn Codec>, RegistryError> {
        self.codecs
            .iter()
            .find(|c| c.qemu_type == Some(value))
            .ok_or_else(|| RegistryError::UnknownQemuType {
                value,
                known: self.known_qemu_types(),
            })?
            .build(0)
    }

    fn known_names(&self) -> String {
        let names: Vec<&str> = self.codecs.iter().map(|c| c.name).collect();
        names.join(", ")
    }

    fn known_qemu_types(&self) -> String {
        let pairs: Vec<String> = self
            .codecs
            .iter()
            .filter_map(|c| c.qemu_type.map(|t| format!("{t}={}", c.name)))
            .collect();
        pairs.join(", ")
    }
}
