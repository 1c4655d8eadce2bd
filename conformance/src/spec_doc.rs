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

/// The Violation cell (the last column) of each rule row, by rule ID.
pub fn violations(text: &str) -> std::collections::HashMap<String, String> {
    let ids = rule_ids(text);
    text.lines()
        .filter(|line| line.trim_start().starts_with("| `"))
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            let id = cells.first()?.trim().trim_matches('`').to_string();
            ids.contains(&id)
                .then(|| (id, cells.last().map_or("", |c| c.trim()).to_string()))
        })
        .collect()
}

/// The Violation cells of the repository's `docs/spec.md`.
pub fn load_violations() -> Result<std::collections::HashMap<String, String>, String> {
    let path = spec_path();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(violations(&text))
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

    #[test]
    fn reads_the_violation_cell() {
        let text =
            "| `HDR-MAGIC` | magic \\| bytes | src | refuse |\n| `RC-MATCH` | x | y | check |\n";
        let v = super::violations(text);
        assert_eq!(v["HDR-MAGIC"], "refuse");
        assert_eq!(v["RC-MATCH"], "check");
    }
}
