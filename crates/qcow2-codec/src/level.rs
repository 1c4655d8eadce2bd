//! Level bytes of the compress format extension and their resolution.

use crate::error::RegistryError;

/// The level range of one codec.
///
/// The header byte is `0` for "the codec's default" or `1..=max`, where `1` is
/// the fastest / weakest setting. Each codec documents how its levels map to
/// its library's native parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelSpec {
    max: u8,
    default: u8,
}

impl LevelSpec {
    /// Describes a codec with levels `1..=max` and the level `0` stands for.
    ///
    /// Fails if `max` is 0 or `default` is not in `1..=max`.
    pub fn new(codec: &str, max: u8, default: u8) -> Result<Self, RegistryError> {
        if max == 0 || default == 0 || default > max {
            return Err(RegistryError::InvalidLevels {
                codec: codec.to_owned(),
                default,
                max,
            });
        }
        Ok(Self { max, default })
    }

    /// Compile-time constructor for built-in codecs; an invalid range fails
    /// the build instead of a run.
    pub(crate) const fn from_const(max: u8, default: u8) -> Self {
        assert!(max > 0 && default > 0 && default <= max);
        Self { max, default }
    }

    /// Highest level.
    pub fn max(&self) -> u8 {
        self.max
    }

    /// The level used when the header byte is 0.
    pub fn default_level(&self) -> u8 {
        self.default
    }

    /// Maps a header level byte to a concrete level in `1..=max`.
    pub fn resolve(&self, codec: &str, level: u8) -> Result<u8, RegistryError> {
        match level {
            0 => Ok(self.default),
            l if l <= self.max => Ok(l),
            l => Err(RegistryError::LevelOutOfRange {
                codec: codec.to_owned(),
                level: l,
                max: self.max,
            }),
        }
    }
}
