//! `docs/fidelity.md` cannot drift: every scenario a row names exists in `scenarios/`, every row
//! names at least one scenario or says "not modelled", and every `f13-` and `r14-` scenario
//! (written from upstream source alone) is pinned by some row.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root")
}

/// The data rows of the table: (line number, cells).
fn rows(text: &str) -> Vec<(usize, Vec<String>)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| area "))
        .map(|(i, l)| {
            // `\|` inside a cell is an escaped pipe, not a column break.
            let cells = l
                .replace("\\|", "\u{0}")
                .trim_matches('|')
                .split('|')
                .map(|c| c.replace('\u{0}', "|").trim().to_string())
                .collect();
            (i + 1, cells)
        })
        .collect()
}

/// The `*.yaml` names in backticks of a cell.
fn scenario_names(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).filter(|s| s.ends_with(".yaml")).map(str::to_string).collect()
}

#[test]
fn the_fidelity_table_names_existing_scenarios_and_leaves_no_gap() {
    let text = std::fs::read_to_string(root().join("docs/fidelity.md")).expect("docs/fidelity.md");
    let rows = rows(&text);
    assert!(rows.len() > 20, "the table has rows");
    let mut named = BTreeSet::new();
    for (line, cells) in &rows {
        assert_eq!(
            cells.len(),
            5,
            "docs/fidelity.md:{line}: five columns (area, profile, upstream, hostdp, scenarios)"
        );
        for c in &cells[..4] {
            assert!(!c.is_empty(), "docs/fidelity.md:{line}: an empty cell");
        }
        let names = scenario_names(&cells[4]);
        assert!(
            !names.is_empty() || cells[4].contains("not modelled"),
            "docs/fidelity.md:{line}: a row without a scenario must say \"not modelled\""
        );
        for n in names {
            assert!(root().join("scenarios").join(&n).is_file(), "docs/fidelity.md:{line}: no scenario {n}");
            named.insert(n);
        }
    }
    for e in std::fs::read_dir(root().join("scenarios")).expect("scenarios/") {
        let name = e.expect("an entry").file_name().to_string_lossy().into_owned();
        if (name.starts_with("f13-") || name.starts_with("r14-")) && name.ends_with(".yaml") {
            assert!(named.contains(&name), "docs/fidelity.md: no row pins {name}");
        }
    }
}
