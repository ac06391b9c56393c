//! `hostdp run`: runs scenarios on this kernel or in VMs and prints the record.

use std::path::PathBuf;

use super::Format;
use crate::model::exit;
use crate::model::profile::Profile;
use crate::model::record::{self, RunRecord};
use crate::runner::{cache_dir, quiet, run_local_as, valid_files_as_root};
use crate::sys::topology;
use crate::target::run_target_as;

/// Arguments of `hostdp run`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Run inside a VM booted with this kernel (`debian-6.1`, `debian-6.12`, a vmlinuz path),
    /// or `host` for this machine's kernel. Repeat for a kernel matrix.
    #[arg(long = "kernel")]
    pub kernels: Vec<String>,
    /// Exit 0 even when scenarios were skipped.
    #[arg(long)]
    pub allow_skips: bool,
    /// Say where the compiled objects and node_config.h headers are (they are kept in the
    /// template cache; also said after a failure).
    #[arg(long)]
    pub keep: bool,
    /// Scenarios run at once (default: the number of CPUs).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Write the JSON record to this file as well (whatever --format says).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Run every file under this profile instead of its own (to observe, e.g. for the
    /// behaviour table; expectations written for another profile may fail).
    #[arg(long)]
    pub profile: Option<String>,
    /// Validate policies against this CRD manifest instead of the embedded v1.14.4 schema of
    /// its kind (as for `check`).
    #[arg(long = "crd", value_name = "FILE")]
    pub crds: Vec<PathBuf>,
    /// After the results, print for each failing step the `expect:` block that would match
    /// what was observed (ready to paste; the file is not rewritten). On standard error with
    /// `--format json`.
    #[arg(long)]
    pub suggest: bool,
    /// Files or folders (default: scenarios/).
    pub paths: Vec<PathBuf>,
}

/// `hostdp run`.
pub fn exec(mut args: Args) -> i32 {
    args.paths = super::default_paths(std::mem::take(&mut args.paths));
    let args = &args;
    let files = match valid_files_as_root("run", &args.paths) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let profile = match args.profile.as_deref().map(|p| (p, Profile::parse(p))) {
        None => None,
        Some((_, Some(p))) => Some(p),
        Some((p, None)) => {
            eprintln!("hostdp run: unknown profile {p:?}: give v1.14.4, v1.15, v1.16, v1.17, v1.18 or v1.19");
            return exit::INVALID;
        }
    };
    topology::install_signal_cleanup();
    let _ = topology::cleanup_stale();
    let rec = if args.kernels.is_empty() {
        RunRecord::single(
            crate::sys::caps::probe(&cache_dir()).kernel.clone(),
            run_local_as(&files, jobs(args), profile),
        )
    } else {
        let mut runs = Vec::new();
        for k in &args.kernels {
            if !quiet() {
                eprintln!("hostdp: kernel {k}: {} scenario(s)", files.len());
            }
            match run_target_as(k, &files, jobs(args), profile) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    eprintln!("hostdp run --kernel {k}: {e}");
                    return if e.is_environment() { exit::ENVIRONMENT } else { exit::FAILED };
                }
            }
        }
        if runs.len() == 1 {
            let r = runs.pop().unwrap();
            let mut rec = RunRecord::single(r.kernel, r.scenarios);
            rec.runs = Vec::new();
            rec
        } else {
            RunRecord::combine(runs)
        }
    };
    let json = serde_json::to_string_pretty(&rec).expect("serialise the record");
    if let Some(o) = &args.output {
        if let Err(e) = std::fs::write(o, &json) {
            eprintln!("hostdp run: cannot write {}: {e}", o.display());
        }
    }
    if args.format == Format::Json {
        println!("{json}");
    } else {
        print!("{}", record::table(&rec));
    }
    if args.suggest {
        let text = suggestions(&rec, profile);
        if args.format == Format::Json {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    }
    if args.keep || rec.summary.failed + rec.summary.errors > 0 {
        // Objects and generated headers are never deleted: they are the template cache.
        eprintln!("hostdp: compiled objects and node_config.h headers are in {}", cache_dir().display());
    }
    let s = rec.summary;
    if s.failed + s.errors > 0 {
        exit::FAILED
    } else if s.skipped > 0 && !args.allow_skips {
        exit::SKIPPED
    } else {
        exit::OK
    }
}

fn jobs(args: &Args) -> usize {
    args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// `--suggest`: per failing step, the `expect:` block matching what it observed.
pub fn suggestions(rec: &RunRecord, profile: Option<Profile>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for sc in rec.scenarios.iter().filter(|s| s.status == record::Status::Fail) {
        let Ok(file) = crate::model::scenario::load(std::path::Path::new(&sc.file)) else { continue };
        for (i, st) in sc.steps.iter().enumerate().filter(|(_, s)| s.status == record::Status::Fail) {
            let Some(step) = file.steps.get(i) else { continue };
            let _ = writeln!(
                out,
                "\n# {} step {} `{}` (line {}): the expect: block that matches what was observed",
                sc.file,
                i + 1,
                st.action,
                st.line
            );
            if let Some(p) = profile.filter(|p| p.as_str() != file.profile) {
                let _ = writeln!(
                    out,
                    "# (observed under --profile {}; the file says profile {})",
                    p.as_str(),
                    file.profile
                );
            }
            out.push_str(&crate::model::suggest::expect_block(&step.expect, st, 4));
        }
    }
    out
}
