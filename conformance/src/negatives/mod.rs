//! Negative cases: each takes an image of the corpus and breaks exactly one rule.

mod bitmaps;
mod clauses;
mod dedup;
mod encryption;
mod engine;
mod extensions;
mod header;
mod roles;
mod seeds;
mod tables;
mod variants;

use qcow2_format::{HeaderArea, RuleId};

use crate::corpus::TestImage;

/// What a negative case hands to the checker.
#[derive(Debug)]
pub enum CaseInput {
    /// A whole image file.
    Bytes(Vec<u8>),
    /// A header area built in code, as a writer would be asked to write it
    /// (for rules that no byte string can break, such as a v3-only bit on v2).
    Area(Box<HeaderArea>),
}

/// Builds a case from the corpus.
pub type Builder = fn(&[TestImage]) -> Result<CaseInput, String>;

/// One negative case.
#[derive(Clone, Copy)]
pub struct NegativeCase {
    /// The rule it breaks.
    pub rule: RuleId,
    /// A short description of the mutation.
    pub name: &'static str,
    /// Builds the mutated input.
    pub build: Builder,
    /// Text the rule's finding must contain, where the spec says what the
    /// error must tell (every unknown bit, the codec's name, which case).
    pub message: &'static [&'static str],
    /// The file that defines it, relative to the repository root.
    pub source: &'static str,
}

/// Every negative case of the suite.
pub fn all() -> Vec<NegativeCase> {
    let modules: [(&'static str, Vec<NegativeCase>); 11] = [
        ("conformance/src/negatives/header.rs", header::cases()),
        (
            "conformance/src/negatives/extensions.rs",
            extensions::cases(),
        ),
        (
            "conformance/src/negatives/encryption.rs",
            encryption::cases(),
        ),
        ("conformance/src/negatives/seeds.rs", seeds::cases()),
        ("conformance/src/negatives/tables.rs", tables::cases()),
        ("conformance/src/negatives/engine.rs", engine::cases()),
        ("conformance/src/negatives/dedup.rs", dedup::cases()),
        ("conformance/src/negatives/bitmaps.rs", bitmaps::cases()),
        ("conformance/src/negatives/clauses.rs", clauses::cases()),
        ("conformance/src/negatives/variants.rs", variants::cases()),
        ("conformance/src/negatives/roles.rs", roles::cases()),
    ];
    modules
        .into_iter()
        .flat_map(|(source, cases)| cases.into_iter().map(move |c| NegativeCase { source, ..c }))
        .collect()
}

/// The first golden image whose header area satisfies `pred`.
pub(crate) fn pick(
    images: &[TestImage],
    what: &str,
    pred: impl Fn(&HeaderArea) -> bool,
) -> Result<Vec<u8>, String> {
    images
        .iter()
        .filter(|i| i.origin == crate::corpus::Origin::Qemu)
        .find(|i| HeaderArea::parse(&i.bytes).is_ok_and(|a| pred(&a)))
        .map(|i| i.bytes.clone())
        .ok_or_else(|| format!("no golden image that is {what}"))
}

/// The plain v3 64 KiB image.
pub fn plain(images: &[TestImage]) -> Result<Vec<u8>, String> {
    crate::seed_images::plain_base(images).map(|i| i.bytes.clone())
}

/// The image of the corpus called `name`.
pub(crate) fn named(images: &[TestImage], name: &str) -> Result<Vec<u8>, String> {
    crate::corpus::find(images, name).map(|i| i.bytes.clone())
}

/// Shorthand for a case.
pub(crate) const fn case(rule: RuleId, name: &'static str, build: Builder) -> NegativeCase {
    NegativeCase {
        rule,
        name,
        build,
        message: &[],
        source: "",
    }
}

impl NegativeCase {
    /// The same case, whose finding must also contain each of `texts`.
    pub(crate) const fn saying(self, texts: &'static [&'static str]) -> Self {
        Self {
            message: texts,
            ..self
        }
    }
}
