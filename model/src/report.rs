//! Reports for CI systems, made from the per-kernel runs of `hostdp run`: JUnit XML
//! (`--format junit`, written by the nextest project's `quick-junit`) and a markdown summary
//! (`--format markdown`, e.g. for a GitHub Actions job summary). The JSON record is the record;
//! these are views of it and carry nothing it does not.

use std::fmt::Write as _;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use crate::record::{KernelRun, ScenarioRecord, Status, Summary};

/// What the reports need beside the runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// `--profile` when given: every file ran under it, and the re-run command says so.
    pub profile: Option<&'a str>,
}

/// The command that runs one scenario again the same way.
pub fn rerun(run: &KernelRun, sc: &ScenarioRecord, ctx: Context<'_>) -> String {
    let mut s = String::from("hostdp run");
    if run.target != "host" {
        let _ = write!(s, " --kernel {}", run.target);
    }
    if let Some(p) = ctx.profile {
        let _ = write!(s, " --profile {p}");
    }
    let _ = write!(s, " {}", sc.file);
    s
}

/// A test case's name: the scenario's name and, when it has one, its profile.
fn case_name(sc: &ScenarioRecord) -> String {
    if sc.profile.is_empty() {
        sc.name.clone()
    } else {
        format!("{} [{}]", sc.name, sc.profile)
    }
}

/// The failed and errored steps of a scenario, expected beside observed, one line each.
fn step_details(sc: &ScenarioRecord) -> Vec<String> {
    let mut out = Vec::new();
    for (i, st) in sc.steps.iter().enumerate() {
        if st.status == Status::Pass {
            continue;
        }
        out.push(format!("step {} `{}` (line {}): {}", i + 1, st.action, st.line, st.status.as_str()));
        if let Some(e) = &st.error {
            out.push(format!("  error: {e}"));
        }
        for m in &st.mismatches {
            out.push(format!("  {}:", m.key));
            out.push(format!("    expected: {}", m.expected));
            out.push(format!("    observed: {}", m.observed));
        }
    }
    out
}

/// The first failing step's first mismatch, as a one-line message.
fn first_problem(sc: &ScenarioRecord) -> Option<(usize, String)> {
    let (i, st) = sc.steps.iter().enumerate().find(|(_, st)| st.status != Status::Pass)?;
    let what = match (st.mismatches.first(), &st.error) {
        (Some(m), _) => format!("{}: expected {}, observed {}", m.key, m.expected, m.observed),
        (None, Some(e)) => e.clone(),
        (None, None) => st.status.as_str().to_string(),
    };
    Some((st.line, format!("step {} `{}` (line {}): {what}", i + 1, st.action, st.line)))
}

/// JUnit XML: a test suite per kernel, a test case per scenario (named `NAME [PROFILE]`,
/// classname the kernel asked for, `file` the scenario file): failures with every mismatch
/// and the re-run command, errors with the reason, skips with what the kernel lacks.
pub fn junit(runs: &[KernelRun], ctx: Context<'_>) -> String {
    let mut report = Report::new("hostdp");
    let mut total = Duration::ZERO;
    for run in runs {
        let mut suite = TestSuite::new(format!("{} ({})", run.target, run.kernel));
        let time = Duration::from_millis(run.millis);
        total += time;
        suite.set_time(time);
        suite.add_property(Property::new("kernel", run.kernel.as_str()));
        suite.add_property(Property::new("target", run.target.as_str()));
        if let Some(p) = ctx.profile {
            suite.add_property(Property::new("profile", p));
        }
        for sc in &run.scenarios {
            suite.add_test_case(test_case(run, sc, ctx));
        }
        report.add_test_suite(suite);
    }
    report.set_time(total);
    report.to_string().expect("a JUnit report of strings serialises")
}

fn test_case(run: &KernelRun, sc: &ScenarioRecord, ctx: Context<'_>) -> TestCase {
    let rerun = rerun(run, sc, ctx);
    let status = match sc.status {
        Status::Pass => TestCaseStatus::success(),
        Status::Skipped => {
            let mut s = TestCaseStatus::skipped();
            s.set_message(sc.reason.clone().unwrap_or_else(|| "skipped".into()));
            s
        }
        Status::Fail => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            let msg = first_problem(sc).map(|(_, m)| m).unwrap_or_else(|| "an expectation did not hold".into());
            s.set_message(msg).set_type("mismatch");
            let mut text = step_details(sc);
            text.push(format!("re-run: {rerun}"));
            s.set_description(text.join("\n"));
            s
        }
        Status::Error => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            let reason = sc.reason.clone().unwrap_or_else(|| "hostdp could not run it".into());
            s.set_message(reason.as_str()).set_type("error");
            let mut text = vec![reason];
            text.extend(step_details(sc));
            text.push(format!("re-run: {rerun}"));
            s.set_description(text.join("\n"));
            s
        }
    };
    let mut case = TestCase::new(case_name(sc), status);
    case.set_classname(run.target.as_str());
    case.set_time(Duration::from_millis(sc.millis));
    case.extra.insert("file".into(), sc.file.as_str().into());
    if let Some((line, _)) = first_problem(sc) {
        case.extra.insert("line".into(), line.to_string().into());
    }
    if !sc.profile.is_empty() {
        case.add_property(Property::new("profile", sc.profile.as_str()));
    }
    case
}

/// The markdown summary: the totals, a table of scenario × kernel status (`–` where a kernel
/// did not run the file, e.g. in another partition), the failures and errors in detail with
/// the re-run command, and the skips with their reasons (folded).
pub fn markdown(runs: &[KernelRun], ctx: Context<'_>) -> String {
    let mut total = Summary::default();
    for r in runs {
        let s = Summary::of(&r.scenarios);
        total.passed += s.passed;
        total.failed += s.failed;
        total.errors += s.errors;
        total.skipped += s.skipped;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### hostdp: {} passed, {} failed, {} errors, {} skipped\n",
        total.passed, total.failed, total.errors, total.skipped
    );
    // Rows: every file in the order first seen; columns: the kernels.
    let mut rows: Vec<(&str, &str, &str)> = Vec::new();
    for r in runs {
        for sc in &r.scenarios {
            if !rows.iter().any(|(f, _, _)| *f == sc.file) {
                rows.push((sc.file.as_str(), sc.name.as_str(), sc.profile.as_str()));
            }
        }
    }
    s.push_str("| scenario | profile |");
    for r in runs {
        let _ = write!(s, " {} ({}) |", cell(&r.target), cell(&r.kernel));
    }
    s.push('\n');
    s.push_str(&"|---".repeat(2 + runs.len()));
    s.push_str("|\n");
    for (file, name, profile) in &rows {
        let _ = write!(s, "| `{}` | {} |", cell(name), cell(profile));
        for r in runs {
            let status = r.scenarios.iter().find(|x| x.file == *file).map(|x| x.status);
            let c = match status {
                None => "–",
                Some(Status::Pass) => "✅ pass",
                Some(Status::Fail) => "❌ **fail**",
                Some(Status::Error) => "💥 **error**",
                Some(Status::Skipped) => "⏭️ skipped",
            };
            let _ = write!(s, " {c} |");
        }
        s.push('\n');
    }
    let bad: Vec<(&KernelRun, &ScenarioRecord)> = runs
        .iter()
        .flat_map(|r| r.scenarios.iter().map(move |sc| (r, sc)))
        .filter(|(_, sc)| matches!(sc.status, Status::Fail | Status::Error))
        .collect();
    if !bad.is_empty() {
        s.push_str("\n#### Failures\n");
        for (r, sc) in bad {
            let _ = writeln!(s, "\n**`{}`** on {} ({}): {}", sc.file, r.target, r.kernel, sc.status.as_str());
            if let Some(reason) = &sc.reason {
                let _ = writeln!(s, "\n{}", reason.replace('\n', " "));
            }
            let details = step_details(sc);
            if !details.is_empty() {
                let _ = writeln!(s, "\n```\n{}\n```", details.join("\n").replace("```", "'''"));
            }
            let _ = writeln!(s, "\nRe-run: `{}`", rerun(r, sc, ctx));
        }
    }
    let skipped: Vec<(&KernelRun, &ScenarioRecord)> = runs
        .iter()
        .flat_map(|r| r.scenarios.iter().map(move |sc| (r, sc)))
        .filter(|(_, sc)| sc.status == Status::Skipped)
        .collect();
    if !skipped.is_empty() {
        let _ = writeln!(s, "\n<details><summary>{} skipped</summary>\n", skipped.len());
        for (r, sc) in skipped {
            let _ = writeln!(s, "- `{}` on {}: {}", sc.file, r.target, sc.reason.as_deref().unwrap_or("skipped"));
        }
        s.push_str("\n</details>\n");
    }
    s
}

/// Text safe inside a markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Mismatch, StepRecord};

    fn sc(file: &str, status: Status) -> ScenarioRecord {
        let step = StepRecord {
            action: "start".into(),
            line: 12,
            status: if status == Status::Fail { Status::Fail } else { Status::Pass },
            error: None,
            devices: Some(vec!["eth0".into()]),
            regenerated: vec![],
            attachments: vec![],
            mismatches: if status == Status::Fail {
                vec![Mismatch {
                    key: "attachments.eth0.ingress".into(),
                    expected: "[cil_from_netdev]".into(),
                    observed: "nothing".into(),
                    why: vec![],
                }]
            } else {
                vec![]
            },
            policy_maps: vec![],
            traffic: None,
        };
        ScenarioRecord {
            file: format!("scenarios/{file}.yaml"),
            name: file.into(),
            profile: "v1.14.4".into(),
            status,
            reason: match status {
                Status::Skipped => Some("kernel lacks bonding".into()),
                Status::Error => Some("build node: <eth0> & \"quotes\"".into()),
                _ => None,
            },
            kernel: Some("6.1.0-56-amd64".into()),
            millis: 1500,
            phases: None,
            steps: vec![step],
        }
    }

    fn runs() -> Vec<KernelRun> {
        let scenarios =
            vec![sc("a", Status::Pass), sc("b", Status::Fail), sc("c", Status::Skipped), sc("d", Status::Error)];
        vec![
            KernelRun {
                target: "debian-6.1".into(),
                kernel: "6.1.0-56-amd64".into(),
                summary: Summary::of(&scenarios),
                scenarios,
                millis: 30_000,
            },
            KernelRun {
                target: "host".into(),
                kernel: "6.18.0".into(),
                scenarios: vec![sc("a", Status::Pass)],
                summary: Summary::default(),
                millis: 100,
            },
        ]
    }

    #[test]
    fn junit_has_a_case_per_scenario_and_kernel_and_reads_back() {
        let xml = junit(&runs(), Context { profile: None });
        let back = Report::deserialize_from_str(&xml).expect("quick-junit reads its own output");
        assert_eq!((back.tests, back.failures, back.errors), (5, 1, 1));
        assert_eq!(back.test_suites.len(), 2);
        let s = &back.test_suites[0];
        assert_eq!(s.name.as_str(), "debian-6.1 (6.1.0-56-amd64)");
        assert_eq!((s.tests, s.failures, s.errors, s.skipped), (4, 1, 1, 1));
        let names: Vec<&str> = s.test_cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a [v1.14.4]", "b [v1.14.4]", "c [v1.14.4]", "d [v1.14.4]"]);
        let fail = &s.test_cases[1];
        assert_eq!(fail.classname.as_ref().map(|c| c.as_str()), Some("debian-6.1"));
        assert_eq!(fail.extra.get("file").map(|c| c.as_str()), Some("scenarios/b.yaml"));
        let TestCaseStatus::NonSuccess { kind: NonSuccessKind::Failure, message, description, .. } = &fail.status
        else {
            panic!("b is a failure: {:?}", fail.status)
        };
        assert!(message.as_ref().unwrap().as_str().contains("attachments.eth0.ingress"));
        let d = description.as_ref().unwrap().as_str();
        assert!(d.contains("expected: [cil_from_netdev]") && d.contains("observed: nothing"), "{d}");
        assert!(d.contains("re-run: hostdp run --kernel debian-6.1 scenarios/b.yaml"), "{d}");
        let TestCaseStatus::Skipped { message, .. } = &s.test_cases[2].status else { panic!("c is skipped") };
        assert_eq!(message.as_ref().unwrap().as_str(), "kernel lacks bonding");
        let TestCaseStatus::NonSuccess { kind: NonSuccessKind::Error, message, .. } = &s.test_cases[3].status else {
            panic!("d is an error")
        };
        assert_eq!(message.as_ref().unwrap().as_str(), "build node: <eth0> & \"quotes\"");
    }

    #[test]
    fn markdown_is_a_matrix_with_the_failures_detailed() {
        let md = markdown(&runs(), Context { profile: Some("v1.16") });
        assert!(md.starts_with("### hostdp: 2 passed, 1 failed, 1 errors, 1 skipped\n"), "{md}");
        assert!(md.contains("| scenario | profile | debian-6.1 (6.1.0-56-amd64) | host (6.18.0) |"), "{md}");
        assert!(md.contains("| `a` | v1.14.4 | ✅ pass | ✅ pass |"), "{md}");
        assert!(md.contains("| `b` | v1.14.4 | ❌ **fail** | – |"), "{md}");
        assert!(md.contains("Re-run: `hostdp run --kernel debian-6.1 --profile v1.16 scenarios/b.yaml`"), "{md}");
        assert!(md.contains("- `scenarios/c.yaml` on debian-6.1: kernel lacks bonding"), "{md}");
    }
}
