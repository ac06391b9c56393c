//! The `hostdp` command line: one file per subcommand, each with its arguments and its `exec`.
//! The environment is read once here ([`crate::paths`]) before any command runs.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub mod check;
pub mod diff;
pub mod explain;
pub mod gc;
pub mod inspect;
pub mod ledger;
pub mod profiles;
pub mod run;
pub mod table;

#[derive(Parser)]
#[command(
    name = "hostdp",
    version,
    about = "Which eBPF programs Cilium's host datapath attaches to which links, on real kernels"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Output formats of `run`, `inspect`, `explain` and `diff`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate scenario files and the fixtures they name, without privileges.
    Check(check::Args),
    /// Run scenarios (files or folders; default scenarios/).
    Run(run::Args),
    /// List every tc, tcx and XDP attachment on every link of a namespace (read-only).
    Inspect(inspect::Args),
    /// A live node's verdict: which devices the profile's loader would select and why, what
    /// its start would do, and whether what is attached is what it would leave (read-only;
    /// exit 0 match, 1 differs, 5 the agent would refuse to start).
    Explain(explain::Args),
    /// Render a JSON result record as the README's behaviour table (markdown): per scenario,
    /// the devices selected at `start` and what landed on each named device.
    Table(table::Args),
    /// Run scenarios under several upstream profiles and show, per step and device, where
    /// the attachments differ (exit 0: no difference, 1: some).
    Diff(diff::Args),
    /// The upstream profiles and the named upstream changes each is made of (markdown).
    Profiles,
    /// Remove what dead hostdp runs left behind (namespaces, bpffs mounts); live runs are kept.
    Gc,
    /// Leak ledger: snapshot what the harness could leave behind, and compare with a snapshot.
    Ledger {
        #[command(subcommand)]
        cmd: ledger::Cmd,
    },
}

/// Parses the command line, reads the environment once, runs the command; the exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::paths::install(crate::paths::Paths::from_env());
    let crds = match &cli.cmd {
        Cmd::Check(a) => a.crds.as_slice(),
        Cmd::Run(a) => a.crds.as_slice(),
        _ => &[],
    };
    if let Err(code) = crate::runner::use_crds(crds) {
        return code;
    }
    match cli.cmd {
        Cmd::Check(a) => check::exec(a),
        Cmd::Run(a) => run::exec(a),
        Cmd::Inspect(a) => inspect::exec(a),
        Cmd::Explain(a) => explain::exec(a),
        Cmd::Table(a) => table::exec(a),
        Cmd::Diff(a) => diff::exec(a),
        Cmd::Profiles => profiles::exec(),
        Cmd::Gc => gc::exec(),
        Cmd::Ledger { cmd } => ledger::exec(cmd),
    }
}

/// `scenarios/` when no path is given.
fn default_paths(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    if paths.is_empty() {
        vec![PathBuf::from("scenarios")]
    } else {
        paths
    }
}
