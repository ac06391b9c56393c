//! `hostdp diff`: the same scenarios under several profiles, where the attachments differ.

use std::path::PathBuf;

use std::collections::BTreeSet;

use super::Format;
use crate::diff::{compare, not_in_record, run, table, DiffArgs, DiffError, ScenarioDiff};
use crate::model::exit;
use crate::model::profile::Profile;
use crate::model::record::{self, RunRecord, ScenarioRecord};
use crate::runner;

/// Arguments of `hostdp diff`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Profiles to compare, comma-separated (default: every profile).
    #[arg(long, value_delimiter = ',', default_value = "v1.14.4,v1.15,v1.16,v1.17,v1.18,v1.19")]
    pub profiles: Vec<String>,
    /// Compare the mechanism (tc, tcx, xdp mode) too, not only the programs.
    #[arg(long)]
    pub mechanism: bool,
    /// Run inside a VM booted with this kernel, as for `run --kernel`.
    #[arg(long)]
    pub kernel: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Scenario files or folders to run; or result records (`*.json`, from `hostdp run
    /// --profile P --json FILE`, shards merged) to compare without running anything.
    pub paths: Vec<PathBuf>,
}

/// `hostdp diff`.
pub fn exec(args: Args) -> i32 {
    let args = DiffArgs {
        profiles: args.profiles,
        mechanism: args.mechanism,
        kernel: args.kernel,
        json: args.format == Format::Json,
        paths: args.paths,
    };
    cli(&args)
}

/// `hostdp diff`: 0 no differences, 1 some, 2 invalid input, 4 environment.
fn cli(args: &DiffArgs) -> i32 {
    let records = !args.paths.is_empty() && args.paths.iter().all(|p| p.extension().is_some_and(|e| e == "json"));
    let diffs = if records {
        match super::table::read_records("diff", &args.paths).and_then(|r| from_records(r, args.mechanism)) {
            Ok(d) => d,
            Err(code) => return code,
        }
    } else {
        match run_scenarios(args) {
            Ok(d) => d,
            Err(code) => return code,
        }
    };
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "scenarios": diffs })).expect("serialise the diff")
        );
    } else {
        out!("{}", table(&diffs));
    }
    if diffs.iter().any(ScenarioDiff::differs) {
        exit::FAILED
    } else {
        exit::OK
    }
}

/// Records of runs under single profiles (shards merged first): per file, the profiles compared.
fn from_records(recs: Vec<RunRecord>, mechanism: bool) -> Result<Vec<ScenarioDiff>, i32> {
    let mut by_profile: Vec<(Profile, RunRecord)> = Vec::new();
    for rec in record::merge_shards(recs) {
        let names: BTreeSet<&str> = rec.scenarios.iter().map(|s| s.profile.as_str()).collect();
        let profile = match names.iter().collect::<Vec<_>>().as_slice() {
            [one] => Profile::parse(one),
            _ => None,
        };
        let Some(p) = profile.filter(|p| !by_profile.iter().any(|(q, _)| q == p)) else {
            errln!(
                "hostdp diff: give one record (or its shards) per profile, each run under one profile with `hostdp run \
                 --profile P`; found a record with profiles {names:?}"
            );
            return Err(exit::INVALID);
        };
        by_profile.push((p, rec));
    }
    if by_profile.len() < 2 {
        errln!("{}", DiffError::TooFew(by_profile.len()));
        return Err(exit::INVALID);
    }
    by_profile.sort_by_key(|(p, _)| Profile::ALL.iter().position(|q| q == p));
    let profiles: Vec<Profile> = by_profile.iter().map(|(p, _)| *p).collect();
    let mut files: Vec<(String, String)> = Vec::new();
    for (_, r) in &by_profile {
        for s in &r.scenarios {
            if !files.iter().any(|(f, _)| f == &s.file) {
                files.push((s.file.clone(), s.name.clone()));
            }
        }
    }
    files.sort();
    Ok(files
        .iter()
        .map(|(file, name)| {
            let recs: Vec<ScenarioRecord> = by_profile
                .iter()
                .map(|(p, r)| {
                    r.scenarios.iter().find(|s| &s.file == file).cloned().unwrap_or_else(|| {
                        not_in_record(file, &format!("not in the records of profile {}", p.as_str()))
                    })
                })
                .collect();
            compare(file, name, &profiles, &recs, mechanism)
        })
        .collect())
}

/// Runs the scenarios under each profile (as root).
fn run_scenarios(args: &DiffArgs) -> Result<Vec<ScenarioDiff>, i32> {
    runner::valid_files_as_root("diff", &args.paths)?;
    crate::sys::topology::install_signal_cleanup();
    match run(args) {
        Ok(d) => Ok(d),
        Err(e @ (DiffError::Profile(_) | DiffError::TooFew(_) | DiffError::Scenario(_))) => {
            errln!("{e}");
            Err(exit::INVALID)
        }
        Err(e) => {
            errln!("{e}");
            Err(exit::ENVIRONMENT)
        }
    }
}
