//! Property tests of the two parsers that read user files: the scenario parser and the policy
//! fixture validator. On any bytes, and on valid files mutated at random, they never panic and
//! return either a value or an error placed inside the file. Bounded: a fixed case count per
//! property (a few seconds in all). Inputs that once broke them are kept as regressions below.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hostdp::model::policy::{self, PolicyError, SchemaSet};
use hostdp::model::scenario::{self, ScenarioError};
use proptest::prelude::*;

fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn yaml_in(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(project().join(dir))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

fn scenarios() -> &'static [(PathBuf, Vec<u8>)] {
    static S: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    S.get_or_init(|| yaml_in("scenarios"))
}

fn policies() -> &'static [(PathBuf, Vec<u8>)] {
    static S: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    S.get_or_init(|| yaml_in("fixtures/policies"))
}

fn schemas() -> &'static SchemaSet {
    static S: OnceLock<SchemaSet> = OnceLock::new();
    S.get_or_init(SchemaSet::embedded)
}

/// Whether a 1-based position falls inside the text (or one past its end, where "unexpected
/// end" errors point). YAML breaks lines at a lone CR too, plain byte counting only at LF:
/// either reading is accepted.
fn inside(text: &[u8], line: usize, col: usize) -> bool {
    let s = String::from_utf8_lossy(text);
    let yaml = s.replace("\r\n", "\n").replace('\r', "\n");
    [s.to_string(), yaml].iter().any(|t| {
        let lines: Vec<&str> = t.split('\n').collect();
        line >= 1
            && line <= lines.len() + 1
            && col >= 1
            && (line > lines.len() || col <= lines[line - 1].chars().count() + 2)
    })
}

fn check_scenario(path: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    match scenario::parse(path, bytes) {
        Ok(_) => Ok(()),
        Err(ScenarioError::At { line, col, message, .. }) => {
            prop_assert!(!message.is_empty());
            prop_assert!(inside(bytes, line, col), "position {line}:{col} outside the input: {message}");
            Ok(())
        }
        Err(ScenarioError::File { message, .. }) => {
            prop_assert!(!message.is_empty());
            Ok(())
        }
        Err(ScenarioError::Read { .. }) => Err(TestCaseError::fail("parse never reads")),
    }
}

fn check_policy(path: &Path, text: &str) -> Result<(), TestCaseError> {
    match policy::parse_fixture(path, text, schemas()) {
        Ok(_) | Err(PolicyError::Empty { .. }) => Ok(()),
        Err(PolicyError::Syntax { line, column, message, .. }) => {
            prop_assert!(!message.is_empty());
            prop_assert!(
                inside(text.as_bytes(), line, column),
                "position {line}:{column} outside the input: {message}"
            );
            Ok(())
        }
        Err(PolicyError::Invalid { diagnostics, .. }) => {
            prop_assert!(!diagnostics.is_empty());
            for d in diagnostics {
                prop_assert!(
                    inside(text.as_bytes(), d.line, d.column),
                    "position {}:{} outside the input: {d}",
                    d.line,
                    d.column
                );
            }
            Ok(())
        }
        Err(e) => Err(TestCaseError::fail(format!("unexpected error kind: {e}"))),
    }
}

/// One random edit of a valid file: delete, duplicate or overwrite a span, insert YAML-ish
/// tokens, or swap two lines.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Duplicate(usize, usize),
    Insert(usize, &'static str),
    Byte(usize, u8),
    SwapLines(usize, usize),
}

const TOKENS: &[&str] = &[
    ":",
    "- ",
    "  ",
    "\n",
    "{",
    "}",
    "[",
    "]",
    "&a ",
    "*a",
    "<<: *a",
    "---\n",
    "...",
    "\"",
    "'",
    "#",
    "!!str ",
    "!!int ",
    "? ",
    "|",
    ">",
    "\t",
    "null",
    "~",
    "true",
    "0x",
    "-1",
    "99999999999999999999",
    "\u{feff}",
    "é",
    "\\",
    "%YAML 1.2\n",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Edit::Duplicate(a, n)),
        (any::<usize>(), proptest::sample::select(TOKENS)).prop_map(|(a, t)| Edit::Insert(a, t)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Edit::Byte(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

fn apply(mut text: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = text.len().max(1);
        match *e {
            Edit::Delete(a, len) => {
                let a = a % n;
                let b = (a + len).min(text.len());
                if a < b {
                    text.drain(a..b);
                }
            }
            Edit::Duplicate(a, len) => {
                let a = a % n;
                let b = (a + len).min(text.len());
                if a < b {
                    let piece = text[a..b].to_vec();
                    text.splice(b..b, piece);
                }
            }
            Edit::Insert(a, t) => {
                let a = a % (text.len() + 1);
                text.splice(a..a, t.bytes());
            }
            Edit::Byte(a, b) => {
                if !text.is_empty() {
                    let a = a % text.len();
                    text[a] = b;
                }
            }
            Edit::SwapLines(a, b) => {
                let mut lines: Vec<Vec<u8>> = text.split(|c| *c == b'\n').map(<[u8]>::to_vec).collect();
                let (a, b) = (a % lines.len(), b % lines.len());
                lines.swap(a, b);
                text = lines.join(&b'\n');
            }
        }
    }
    text
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(5000))]

    #[test]
    fn scenario_parse_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_scenario(&project().join("scenarios/fuzz.yaml"), &bytes)?;
    }

    #[test]
    fn scenario_parse_on_mutated_scenarios(i in any::<usize>(), edits in proptest::collection::vec(edit(), 1..6)) {
        let (path, base) = &scenarios()[i % scenarios().len()];
        let text = apply(base.clone(), &edits);
        check_scenario(path, &text)?;
    }

    #[test]
    fn policy_parse_on_arbitrary_text(text in "\\PC{0,300}") {
        check_policy(Path::new("fuzz.yaml"), &text)?;
    }

    #[test]
    fn policy_parse_on_mutated_fixtures(i in any::<usize>(), edits in proptest::collection::vec(edit(), 1..6)) {
        let (path, base) = &policies()[i % policies().len()];
        let text = apply(base.clone(), &edits);
        // The validator takes text: mutations that break UTF-8 are read lossily, as a file
        // read would have refused them earlier.
        check_policy(path, &String::from_utf8_lossy(&text))?;
    }
}

/// A YAML "billion laughs": nine levels of nine aliases each, 9^9 leaves once expanded.
fn alias_bomb(indent: &str) -> String {
    let mut s = format!("{indent}a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        s.push_str(&format!("{indent}a{i}: &a{i} [{refs}]\n"));
    }
    s
}

/// Fails the test if `f` takes longer than `limit` (it would otherwise hang the suite).
fn bounded<R: Send + 'static>(what: &str, limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let t0 = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    let r = rx.recv_timeout(limit).unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}"));
    eprintln!("{what}: answered in {:?}", t0.elapsed());
    r
}

#[test]
fn scenario_alias_bomb_fails_fast() {
    let text = format!(
        "profile: v1.14.4\ntopology:\n  links:\n    - {{name: eth0, kind: veth}}\nagent:\n{}steps:\n  - start: {{}}\n",
        alias_bomb("  ")
    );
    let e = bounded("scenario alias bomb", Duration::from_secs(5), move || {
        scenario::parse(Path::new("bomb.yaml"), text.as_bytes()).map(|_| ()).map_err(|e| e.to_string())
    });
    let e = e.expect_err("an alias bomb is not a scenario");
    assert!(e.starts_with("bomb.yaml:"), "{e}");
}

#[test]
fn policy_alias_bomb_fails_fast() {
    let text = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bomb\n  labels:\n{}spec:\n  endpointSelector: {{}}\n",
        alias_bomb("    ")
    );
    let e = bounded("policy alias bomb", Duration::from_secs(5), move || {
        policy::parse_fixture(Path::new("bomb.yaml"), &text, schemas()).map(|_| ()).map_err(|e| e.to_string())
    });
    let e = e.expect_err("an alias bomb is not a policy");
    assert!(e.contains("alias"), "{e}");
}

#[test]
fn deep_nesting_fails_fast_without_overflowing_the_stack() {
    for levels in [100, 100_000] {
        deep_nesting(levels);
    }
}

fn deep_nesting(levels: usize) {
    let deep = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    let scenario_text = format!("profile: v1.14.4\ndescription: {deep}\n");
    let e = bounded("scenario deep nesting", Duration::from_secs(5), move || {
        scenario::parse(Path::new("deep.yaml"), scenario_text.as_bytes()).map(|_| ()).map_err(|e| e.to_string())
    });
    let e = e.unwrap_err();
    assert!(e.contains("nesting"), "{levels} levels: {e}");
    let policy_text =
        format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: deep\nspec: {deep}\n");
    let e = bounded("policy deep nesting", Duration::from_secs(5), move || {
        policy::parse_fixture(Path::new("deep.yaml"), &policy_text, schemas()).map(|_| ()).map_err(|e| e.to_string())
    });
    let e = e.unwrap_err();
    assert!(e.contains("nesting") || e.contains("recursion"), "{levels} levels: {e}");
}

/// A 50 MB scenario file: refused by its size before any parsing.
#[test]
fn huge_files_fail_fast() {
    let mut text = String::from("profile: v1.14.4\ntopology:\n  links:\n    - {name: eth0, kind: veth}\nsteps:\n  - start: {}\ndescription: |\n");
    while text.len() < 50 << 20 {
        text.push_str("  lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor\n");
    }
    let e = bounded("scenario of 50 MB", Duration::from_secs(10), move || {
        scenario::parse(Path::new("huge.yaml"), text.as_bytes()).map(|_| ()).map_err(|e| e.to_string())
    });
    let e = e.expect_err("a 50 MB scenario is refused");
    assert!(e.contains("too large"), "{e}");
}

/// Inputs the properties above once flagged. A lone CR is a YAML line break, so positions after
/// it count it as one (the first two); the UTF-8 check counts only LF (the third).
#[test]
fn regressions() {
    let scenario = std::fs::read(project().join("scenarios/restart-feature-off.yaml")).unwrap();
    let mut with_cr = scenario.clone();
    let at = with_cr.len() / 2;
    with_cr[at] = b'\r';
    check_scenario(Path::new("cr.yaml"), &with_cr).unwrap();
    let mut bad_utf8 = with_cr.clone();
    bad_utf8[at + 7] = 0x80;
    check_scenario(Path::new("cr-utf8.yaml"), &bad_utf8).unwrap();
    let policy = std::fs::read_to_string(project().join("fixtures/policies/l4-rule.yaml")).unwrap();
    check_policy(Path::new("cr.yaml"), &policy.replacen(": ", ":\r", 3)).unwrap();
}
