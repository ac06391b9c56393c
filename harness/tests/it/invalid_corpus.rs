//! Every file in `fixtures/invalid/` is a scenario with exactly one problem. Its first line says
//! which error it must produce: `# expect: FILE:LINE:COL: MESSAGE-SUBSTRING`. This test loads
//! each file and compares position and message, so the wording and placement of errors stay put.

use std::path::{Path, PathBuf};

use hostdp::model::scenario::{self, ScenarioError};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/invalid")
}

/// Checks one file against its `# expect:` line; `Err` says how it differs.
fn check_file(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    let spec = first.strip_prefix("# expect: ").ok_or("first line is not `# expect: FILE:LINE:COL: MESSAGE`")?;
    let mut parts = spec.splitn(4, ':');
    let (file, line, col, want) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(f), Some(l), Some(c), Some(m)) => (f, l, c, m.trim_start()),
        _ => return Err(format!("malformed expect line: {spec}")),
    };
    let (line, col): (usize, usize) = match (line.parse(), col.parse()) {
        (Ok(l), Ok(c)) => (l, c),
        _ => return Err(format!("malformed position in expect line: {spec}")),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if file != name {
        return Err(format!("expect line names {file}, the file is {name}"));
    }
    match scenario::load(path) {
        Ok(_) => Err("parsed without error".into()),
        Err(ScenarioError::At { path: p, line: l, col: c, message }) => {
            let got = format!("{}:{l}:{c}: {message}", p.file_name().and_then(|n| n.to_str()).unwrap_or_default());
            if p.file_name() == path.file_name() && (l, c) == (line, col) && message.contains(want) {
                Ok(())
            } else {
                Err(format!("got {got}"))
            }
        }
        Err(e) => Err(format!("got an error without position: {e}")),
    }
}

#[test]
fn every_invalid_scenario_fails_as_its_first_line_says() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("fixtures/invalid exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 25, "the corpus has only {} files", files.len());
    let failures: Vec<String> =
        files.iter().filter_map(|f| check_file(f).err().map(|e| format!("{}: {e}", f.display()))).collect();
    assert!(failures.is_empty(), "{} of {} files differ:\n{}", failures.len(), files.len(), failures.join("\n"));
}

#[test]
fn check_reports_every_corpus_file() {
    let (ok, errors) = scenario::check(&[corpus_dir()]);
    assert_eq!(ok, 0);
    assert!(errors.len() >= 25);
}

/// The checker above must be able to fail: a valid scenario, or a wrong position, is reported.
#[test]
fn the_corpus_check_is_not_vacuous() {
    let dir = tempfile::tempdir().unwrap();
    let body = "profile: v1.14.4\ntopology:\n  links:\n    - {name: eth0, kind: veth}\nsteps:\n  - start: {}\n";
    let valid = dir.path().join("valid.yaml");
    std::fs::write(&valid, format!("# expect: valid.yaml:1:1: anything\n{body}")).unwrap();
    assert!(scenario::load(&valid).is_ok());
    assert_eq!(check_file(&valid), Err("parsed without error".to_string()));

    let misplaced = dir.path().join("misplaced.yaml");
    std::fs::write(&misplaced, format!("# expect: misplaced.yaml:4:1: unknown key\n{body}bogus: 1\n")).unwrap();
    assert!(check_file(&misplaced).unwrap_err().starts_with("got misplaced.yaml:8:1: unknown key \"bogus\""));
    let (ok, errors) = scenario::check(&[dir.path().to_path_buf()]);
    assert_eq!((ok, errors.len()), (1, 1));
}

/// `fixtures/broken/`: files with several mistakes each (scenarios, and `policy-*.yaml` policy
/// fixtures). One check reports every mistake of every file, in file order, as the
/// `# expect: LINE:COL: MESSAGE-SUBSTRING` lines at the top of each file say, no more.
#[test]
fn one_check_reports_every_mistake_of_every_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures/broken exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let is_policy = |f: &PathBuf| f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("policy-"));
    let (policies, scenarios): (Vec<PathBuf>, Vec<PathBuf>) = files.iter().cloned().partition(is_policy);
    let checked = scenario::check_all(&scenarios);
    assert_eq!((checked.ok, checked.invalid), (0, files.len() - policies.len()), "{:?}", checked.errors);
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let want: Vec<(usize, usize, String)> = text
            .lines()
            .map_while(|l| l.strip_prefix("# expect: "))
            .map(|spec| {
                let mut p = spec.splitn(3, ':');
                let (l, c, m) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap().trim_start());
                (l.parse().unwrap(), c.parse().unwrap(), m.to_string())
            })
            .collect();
        assert!(want.len() >= 2, "{}: a broken file has several mistakes", f.display());
        let got: Vec<(usize, usize, String)> = if scenarios.contains(f) {
            checked
                .errors
                .iter()
                .filter(|e| e.path() == f.as_path())
                .map(|e| match e {
                    ScenarioError::At { line, col, message, .. } => (*line, *col, message.clone()),
                    other => (0, 0, other.to_string()),
                })
                .collect()
        } else {
            match hostdp::model::policy::load_fixture(f) {
                Err(hostdp::model::policy::PolicyError::Invalid { diagnostics, .. }) => {
                    diagnostics.iter().map(|d| (d.line, d.column, format!("{}: {}", d.path, d.message))).collect()
                }
                other => vec![(0, 0, format!("{other:?}"))],
            }
        };
        let fits = got.len() == want.len()
            && got.iter().zip(&want).all(|(g, w)| g.0 == w.0 && g.1 == w.1 && g.2.contains(&w.2));
        if !fits {
            let show = |v: &[(usize, usize, String)]| {
                v.iter().map(|(l, c, m)| format!("  {l}:{c}: {m}")).collect::<Vec<_>>().join("\n")
            };
            problems.push(format!("{}: want\n{}\ngot\n{}", f.display(), show(&want), show(&got)));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The command says all of it in one run and exits 2.
#[test]
fn hostdp_check_prints_every_mistake_and_exits_2() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/broken");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hostdp")).arg("check").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "unknown key \"kidn\"",
        "\"eht1\" is neither a link",
        "unknown program \"cil_to_netdevv\"",
        "prefix length 33 exceeds 32",
        "port 70000 exceeds 65535",
        "\"eth7\" is not a link at this step",
    ] {
        assert!(stderr.contains(needle), "{needle} missing from:\n{stderr}");
    }
}
