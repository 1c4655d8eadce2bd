//! Reads the rule IDs out of `docs/spec.md`.

use std::path::{Path, PathBuf};

/// Path of the spec document in this repository.
pub fn spec_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join("spec.md")
}

/// Rule IDs in table rows of the form `` | `ID` | ... ``, in document order.
pub fn rule_ids(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let rest = line
                .trim_start()
                .strip_prefix('|')?
                .trim_start()
                .strip_prefix('`')?;
            let id = &rest[..rest.find('`')?];
            let well_formed = id.contains('-')
                && id
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-');
            well_formed.then(|| id.to_string())
        })
        .collect()
}

/// Rule IDs of the repository's `docs/spec.md`.
pub fn load() -> Result<Vec<String>, String> {
    let path = spec_path();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(rule_ids(&text))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_ids_from_table_rows_only() {
        let text = "| ID | Rule |\n|---|---|\n| `HDR-MAGIC` | magic |\nsee `HDR-X` in prose\n| `not-an-id` | x |\n";
        assert_eq!(super::rule_ids(text), vec!["HDR-MAGIC".to_string()]);
    }
}
