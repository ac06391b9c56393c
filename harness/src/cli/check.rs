//! `hostdp check`: validates scenario files and the fixtures they name, without privileges.

use std::path::{Path, PathBuf};

use crate::model::exit;
use crate::model::scenario;

/// Arguments of `hostdp check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Validate policies against this CRD manifest (`kubectl get crd
    /// ciliumnetworkpolicies.cilium.io -o yaml`) instead of the embedded v1.14.4 schema of its
    /// kind; give it twice for both policy kinds.
    #[arg(long = "crd", value_name = "FILE")]
    pub crds: Vec<PathBuf>,
    /// Files or folders (default: scenarios/).
    pub paths: Vec<PathBuf>,
}

/// `hostdp check`.
pub fn exec(args: Args) -> i32 {
    let paths = &super::default_paths(args.paths);
    // Files that are policy fixtures are validated as such (against the CRD schema); the rest
    // are scenario files, which also get the fixtures they name validated.
    let mut errors = Vec::new();
    let files = scenario::expand(paths, &mut errors);
    let (policies, scenarios): (Vec<PathBuf>, Vec<PathBuf>) = files.into_iter().partition(|f| is_policy_fixture(f));
    let mut bad = errors.len();
    let checked = if scenarios.is_empty() { scenario::Checked::default() } else { scenario::check_all(&scenarios) };
    let scenarios_ok = checked.ok;
    bad += checked.invalid;
    errors.extend(checked.errors);
    let mut policies_ok = 0;
    // Every message of every file in one list, by file and position.
    let mut errors: Vec<String> = sorted(errors);
    for f in &policies {
        match hostdp_model::policy::load_fixture(f) {
            Ok(docs) => {
                policies_ok += 1;
                for d in &docs {
                    if let hostdp_model::policy::PolicyDoc::NotAPolicy { kind, line, .. } = d {
                        errln!("{}:{line}: note: a {kind}, not a policy; ignored", f.display());
                    }
                }
            }
            Err(e) => {
                errors.push(e.to_string());
                bad += 1;
            }
        }
    }
    for w in &checked.warnings {
        errln!("{w}");
    }
    for e in &errors {
        errln!("{e}");
    }
    if bad == 0 {
        outln!("{scenarios_ok} scenario file(s) and {policies_ok} policy fixture(s) valid");
        exit::OK
    } else {
        errln!("{bad} invalid file(s) of {} checked", scenarios_ok + policies_ok + bad);
        exit::INVALID
    }
}

/// The messages of `errors`, by file and position.
fn sorted(mut errors: Vec<scenario::ScenarioError>) -> Vec<String> {
    scenario::sort_errors(&mut errors);
    errors.iter().map(ToString::to_string).collect()
}

/// A YAML file whose documents are Cilium policies (a top-level `apiVersion: cilium.io/...`).
fn is_policy_fixture(f: &Path) -> bool {
    std::fs::read_to_string(f)
        .map(|t| t.lines().any(|l| l.starts_with("apiVersion:") && l.contains("cilium.io/")))
        .unwrap_or(false)
}
