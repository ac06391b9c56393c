//! `hostdp run` for CI: `--partition K/N` splits the matrix into disjoint parts that cover it,
//! and `--format junit` / `--summary` report a real run as JUnit (validated against
//! `tests/data/junit.xsd` with xmllint) and markdown.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::root_or_skip;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn hostdp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hostdp"))
        .args(args)
        .current_dir(repo())
        .env("HOSTDP_QUIET", "1")
        .output()
        .expect("run hostdp")
}

fn lines(out: &Output) -> Vec<String> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

const KERNELS: [&str; 6] = ["--kernel", "host", "--kernel", "debian-6.1", "--kernel", "debian-6.12"];

/// `--list --partition 1/3, 2/3, 3/3` over the whole folder and three kernels: no cell twice,
/// none missing (no privileges and no VM needed: nothing runs).
#[test]
fn partitions_are_disjoint_and_cover_the_matrix() {
    let all = lines(&hostdp(&[&["run", "--list"][..], &KERNELS, &["scenarios/"]].concat()));
    assert!(all.len() > 100, "the matrix of scenarios/ × 3 kernels: {}", all.len());
    assert!(all.iter().all(|l| l.split('\t').count() == 3), "file, kernel, profile: {all:?}");
    let mut seen = BTreeSet::new();
    for k in 1..=3 {
        let part = format!("{k}/3");
        let cells = lines(&hostdp(&[&["run", "--list", "--partition", &part][..], &KERNELS, &["scenarios/"]].concat()));
        assert!(cells.len().abs_diff(all.len() / 3) <= 1, "part {part} has {} cells of {}", cells.len(), all.len());
        for c in cells {
            assert!(seen.insert(c.clone()), "{c} is in two parts");
        }
    }
    assert_eq!(seen, all.into_iter().collect::<BTreeSet<_>>(), "the parts together are the matrix");
}

#[test]
fn a_bad_partition_is_invalid_input() {
    for (bad, says) in [("4/3", "K must be between 1 and 3"), ("1-3", "is not K/N"), ("1/0", "N must be at least 1")] {
        let out = hostdp(&["run", "--list", "--partition", bad, "scenarios/"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
}

/// A real run of part 1 of 2 under another profile (so that its scenario fails) on this
/// kernel: it runs exactly the cells `--list` names for that part, the JUnit report is valid
/// JUnit with the failure's mismatches and re-run command and the skip's reason, and the
/// markdown summary is appended.
#[test]
fn junit_and_markdown_of_a_partitioned_run() {
    if !root_or_skip() {
        return;
    }
    let files = [
        "scenarios/veth-node-port-auto.yaml",
        "scenarios/bridge-node-ip.yaml",
        "scenarios/devices-comma-v1.14.4.yaml",
        "scenarios/seed-kpr-partial-bond-vlan.yaml",
    ];
    let dir = tempfile::tempdir().unwrap();
    let (xml, json, md) = (dir.path().join("j.xml"), dir.path().join("r.json"), dir.path().join("s.md"));
    std::fs::write(&md, "earlier summary\n").unwrap();
    let common = ["--profile", "v1.16", "--partition", "1/2"];
    let listed = lines(&hostdp(&[&["run", "--list"][..], &common, &files].concat()));
    let [x, j, m] = [&xml, &json, &md].map(|p| p.display().to_string());
    let out = hostdp(
        &[&["run", "--format", "junit", "--output", &x, "--json", &j, "--summary", &m][..], &common, &files].concat(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a failure: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("FAIL  scenarios/bridge-node-ip.yaml"), "the table is printed: {stdout}");

    let rec: hostdp::model::record::RunRecord = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let ran: Vec<String> = rec.scenarios.iter().map(|s| format!("{}\thost\t{}", s.file, s.profile)).collect();
    assert_eq!(ran, listed, "the run is the part --list names");

    let text = std::fs::read_to_string(&xml).unwrap();
    match Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(repo().join("harness/tests/data/junit.xsd"))
        .arg(&xml)
        .output()
    {
        Ok(v) => assert!(v.status.success(), "{}\n{text}", String::from_utf8_lossy(&v.stderr)),
        Err(e) => eprintln!("skipped the schema check: xmllint: {e} (apt-get install libxml2-utils)"),
    }
    let report = quick_junit::Report::deserialize_from_str(&text).expect("JUnit that quick-junit reads back");
    assert_eq!((report.tests, report.failures, report.errors), (2, 1, 0), "{text}");
    let suite = &report.test_suites[0];
    assert!(suite.name.as_str().starts_with("host ("), "{}", suite.name.as_str());
    let case = |name: &str| suite.test_cases.iter().find(|c| c.name.as_str() == name).expect(name);
    match &case("bridge-node-ip [v1.16]").status {
        quick_junit::TestCaseStatus::NonSuccess { description: Some(d), .. } => {
            let d = d.as_str();
            assert!(d.contains("expected: [br0]") && d.contains("observed: no agent running"), "{d}");
            assert!(d.contains("re-run: hostdp run --profile v1.16 scenarios/bridge-node-ip.yaml"), "{d}");
        }
        s => panic!("bridge-node-ip fails under v1.16: {s:?}"),
    }
    match &case("seed-kpr-partial-bond-vlan [v1.16]").status {
        quick_junit::TestCaseStatus::Skipped { message: Some(m), .. } => {
            assert!(m.as_str().contains("kernel lacks bonding"), "{}", m.as_str())
        }
        s => panic!("no bonding on this kernel: {s:?}"),
    }

    let summary = std::fs::read_to_string(&md).unwrap();
    assert!(summary.starts_with("earlier summary\n### hostdp: 0 passed, 1 failed, 0 errors, 1 skipped"), "{summary}");
    assert!(summary.contains("| `bridge-node-ip` | v1.16 | ❌ **fail** |"), "{summary}");
}

/// Shards of runs under two profiles: `hostdp table` merges each run's shards (one row per
/// file, one column per profile), and `hostdp diff` compares the profiles from the records.
#[test]
fn table_and_diff_merge_the_shards_of_a_run() {
    if !root_or_skip() {
        return;
    }
    let files = ["scenarios/veth-node-port-auto.yaml", "scenarios/bridge-node-ip.yaml"];
    let dir = tempfile::tempdir().unwrap();
    let mut records = Vec::new();
    for profile in ["v1.14.4", "v1.16"] {
        for part in ["1/2", "2/2"] {
            let out = dir.path().join(format!("{profile}-{}.json", &part[..1])).display().to_string();
            let args = ["run", "--allow-skips", "--profile", profile, "--partition", part, "--json", &out];
            let run = hostdp(&[&args[..], &files].concat());
            assert!(run.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&run.stderr));
            records.push(out);
        }
    }
    let records: Vec<&str> = records.iter().map(String::as_str).collect();
    // One run's shards: one record, the behaviour table of both files.
    let table = lines(&hostdp(&[&["table", "--devices", "eth0,br0"][..], &records[..2]].concat()));
    assert_eq!(table.len(), 4, "header, rule, two files: {table:#?}");
    assert!(table[2].starts_with("| `bridge-node-ip` |") && table[3].starts_with("| `veth-node-port-auto` |"));
    // Two runs: a column per profile.
    let table = lines(&hostdp(&[&["table", "--devices", "eth0,br0"][..], &records[..]].concat()));
    // Both ran on this kernel: it is named once, in the first header.
    assert!(
        table[0].starts_with("| configuration (kernel ") && table[0].ends_with("| v1.14.4 | v1.16 |"),
        "{table:#?}"
    );
    assert_eq!(table.len(), 4, "{table:#?}");
    // diff from the records: v1.16 attaches through tcx and refuses the bridge-only node.
    let out = hostdp(&[&["diff", "--format", "json"][..], &records[..]].concat());
    assert_eq!(out.status.code(), Some(1), "the profiles differ: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let diffs = v["scenarios"].as_array().unwrap();
    assert_eq!(diffs.len(), 2);
    assert_eq!(diffs[0]["profiles"], serde_json::json!(["v1.14.4", "v1.16"]));
    // One profile only: nothing to compare.
    let out = hostdp(&[&["diff"][..], &records[..2]].concat());
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
