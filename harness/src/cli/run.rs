//! `hostdp run`: runs scenarios on this kernel or in VMs and prints the record, or a report of
//! it for CI systems (JUnit, markdown); `--partition K/N` runs one part of the matrix.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::model::exit;
use crate::model::partition::{Cell, Partition};
use crate::model::profile::Profile;
use crate::model::record::{self, KernelRun, RunRecord};
use crate::model::report;
use crate::model::scenario::Scenario;
use crate::runner::{cache_dir, quiet, run_parsed, valid_files, valid_files_as_root};
use crate::sys::topology;
use crate::target::{is_host, run_target_with};

/// What `hostdp run` prints.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RunFormat {
    /// Each scenario's status and, for a failure, expected beside observed.
    Table,
    /// The JSON result record.
    Json,
    /// JUnit XML: a test suite per kernel, a test case per scenario.
    Junit,
    /// A markdown summary (scenario × kernel status, the failures in detail), e.g. for a CI
    /// job summary.
    Markdown,
}

/// Arguments of `hostdp run`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value = "table")]
    pub format: RunFormat,
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
    /// Write the JSON record to this file as well (with --format table or json), or the JUnit
    /// or markdown report (with --format junit or markdown; the table is printed then).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write the JSON record to this file, whatever --format says.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Append the markdown summary to this file (e.g. "$GITHUB_STEP_SUMMARY").
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Run part K of N of the scenario × kernel × profile matrix: its cells sorted, the i-th
    /// (from 0) belongs to part i % N + 1. N runners given the same arguments and 1/N .. N/N
    /// run every cell once.
    #[arg(long, value_name = "K/N", value_parser = parse_partition)]
    pub partition: Option<Partition>,
    /// Print the cells this run would run (file, kernel, profile; tab-separated, sorted) and
    /// exit without running anything; no privileges needed.
    #[arg(long)]
    pub list: bool,
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

fn parse_partition(s: &str) -> Result<Partition, String> {
    Partition::parse(s).map_err(|e| e.to_string())
}

/// `hostdp run`.
pub fn exec(mut args: Args) -> i32 {
    args.paths = super::default_paths(std::mem::take(&mut args.paths));
    let args = &args;
    let profile = match args.profile.as_deref().map(|p| (p, Profile::parse(p))) {
        None => None,
        Some((_, Some(p))) => Some(p),
        Some((p, None)) => {
            errln!("hostdp run: unknown profile {p:?}: give v1.14.4, v1.15, v1.16, v1.17, v1.18 or v1.19");
            return exit::INVALID;
        }
    };
    // Parsed once here; the matrix and the local run use these.
    let parsed = match if args.list { valid_files("run", &args.paths) } else { valid_files_as_root("run", &args.paths) }
    {
        Ok(f) => f,
        Err(code) => return code,
    };
    let targets: Vec<String> = if args.kernels.is_empty() { vec!["host".into()] } else { args.kernels.clone() };
    let cells = matrix(&parsed, &targets, profile);
    let chosen = match args.partition {
        Some(p) => p.select(&cells),
        None => {
            let mut all = cells.clone();
            all.sort();
            all
        }
    };
    if args.list {
        let text: String = chosen.iter().map(|c| format!("{}\t{}\t{}\n", c.file, c.kernel, c.profile)).collect();
        // A closed pipe (`| head`) is not an error of the listing.
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
        return exit::OK;
    }
    if let Some(p) = args.partition {
        if !quiet() {
            errln!("hostdp: partition {p}: {} of the matrix's {} cells", chosen.len(), cells.len());
        }
    }
    topology::install_signal_cleanup();
    let _ = topology::cleanup_stale();
    // Each kernel runs its chosen files, in the order given; a kernel with none is not booted.
    let mut shares: Vec<(&String, Vec<&Scenario>)> = Vec::new();
    for k in &targets {
        let mine: Vec<&Scenario> =
            parsed.iter().filter(|sc| chosen.iter().any(|c| &c.kernel == k && c.file == label(&sc.path))).collect();
        if !mine.is_empty() {
            shares.push((k, mine));
        }
    }
    if args.kernels.is_empty() {
        let mut runs = Vec::new();
        for (k, mine) in shares {
            let t0 = std::time::Instant::now();
            let loaded = mine.iter().map(|&sc| (sc.path.clone(), Ok(sc.clone()))).collect();
            let scenarios = run_parsed(loaded, jobs(args), profile);
            runs.push(KernelRun {
                target: k.clone(),
                kernel: crate::sys::caps::probe(&cache_dir()).kernel.clone(),
                summary: record::Summary::of(&scenarios),
                scenarios,
                millis: t0.elapsed().as_millis() as u64,
            });
        }
        return write_reports(args, profile, runs);
    }
    // Several VM kernels run side by side, each guest with its share of this machine's CPUs
    // (`vm::cpus_each`).
    // A kernel that cannot boot is said before any other boots.
    for (k, _) in shares.iter().filter(|(k, _)| !is_host(k)) {
        if let Err(e) = crate::sys::vm::KernelRef::resolve(k) {
            errln!("hostdp run --kernel {k}: {e}");
            return exit::ENVIRONMENT;
        }
    }
    let vms = shares.iter().filter(|(k, _)| !is_host(k)).count() as u32;
    let cpus = (vms > 1).then(|| crate::sys::vm::cpus_each(vms));
    let results: Vec<(&String, Result<KernelRun, crate::target::TargetError>)> = std::thread::scope(|s| {
        let started: Vec<_> = shares
            .iter()
            .map(|(k, mine)| {
                if !quiet() {
                    errln!("hostdp: kernel {k}: {} scenario(s)", mine.len());
                }
                let mine: Vec<PathBuf> = mine.iter().map(|sc| sc.path.clone()).collect();
                let cpus = if is_host(k) { None } else { cpus };
                (*k, s.spawn(move || run_target_with(k, &mine, jobs(args), profile, cpus)))
            })
            .collect();
        // Every run ends (its guest shut down) before any result is looked at.
        started.into_iter().map(|(k, h)| (k, h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))).collect()
    });
    // Every kernel that failed says so; the first one's status is the run's.
    let mut runs = Vec::new();
    let mut failed = None;
    for (k, r) in results {
        match r {
            Ok(r) => runs.push(r),
            Err(e) => {
                errln!("hostdp run --kernel {k}: {e}");
                failed.get_or_insert(if e.is_environment() { exit::ENVIRONMENT } else { exit::FAILED });
            }
        }
    }
    match failed {
        Some(code) => code,
        None => write_reports(args, profile, runs),
    }
}

/// Writes the record and reports of `runs` as `args` ask; the exit status.
fn write_reports(args: &Args, profile: Option<Profile>, runs: Vec<KernelRun>) -> i32 {
    let rec = match runs.len() {
        0 => RunRecord::single(String::new(), Vec::new()),
        1 => RunRecord::single(runs[0].kernel.clone(), runs[0].scenarios.clone()),
        _ => RunRecord::combine(runs.clone()),
    };
    let ctx = report::Context { profile: args.profile.as_deref() };
    let json = serde_json::to_string_pretty(&rec).expect("serialise the record");
    let formatted = match args.format {
        RunFormat::Table => record::table(&rec),
        RunFormat::Json => format!("{json}\n"),
        RunFormat::Junit => report::junit(&runs, ctx),
        RunFormat::Markdown => report::markdown(&runs, ctx),
    };
    let report_to_file = matches!(args.format, RunFormat::Junit | RunFormat::Markdown);
    let mut written = true;
    if let Some(o) = &args.output {
        written &= write_file(o, if report_to_file { &formatted } else { &json }, false);
    }
    if let Some(o) = &args.json {
        written &= write_file(o, &json, false);
    }
    if let Some(o) = &args.summary {
        written &= write_file(o, &report::markdown(&runs, ctx), true);
    }
    if report_to_file && args.output.is_some() {
        out!("{}", record::table(&rec));
    } else {
        out!("{formatted}");
    }
    if args.suggest {
        let text = suggestions(&rec, profile);
        if args.format == RunFormat::Json {
            err!("{text}");
        } else {
            out!("{text}");
        }
    }
    if args.keep || rec.summary.failed + rec.summary.errors > 0 {
        // Objects and generated headers are never deleted: they are the template cache.
        errln!("hostdp: compiled objects and node_config.h headers are in {}", cache_dir().display());
    }
    let s = rec.summary;
    if s.failed + s.errors > 0 || !written {
        exit::FAILED
    } else if s.skipped > 0 && !args.allow_skips {
        exit::SKIPPED
    } else {
        exit::OK
    }
}

/// The matrix: every file on every kernel, under `--profile` or the file's own.
fn matrix(parsed: &[Scenario], targets: &[String], profile: Option<Profile>) -> Vec<Cell> {
    let mut cells = Vec::new();
    for sc in parsed {
        let p = profile.map_or_else(|| sc.profile.clone(), |p| p.as_str().to_string());
        for k in targets {
            cells.push(Cell { file: label(&sc.path), kernel: k.clone(), profile: p.clone() });
        }
    }
    cells
}

/// A file as the matrix names it: as given, as the record does.
fn label(f: &Path) -> String {
    f.display().to_string()
}

/// Writes (or appends to) an output file; a failure is said and makes the exit status 1.
fn write_file(path: &Path, text: &str, append: bool) -> bool {
    let res = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = &res {
        errln!("hostdp run: cannot write {}: {e}", path.display());
    }
    res.is_ok()
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
