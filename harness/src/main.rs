//! The `hostdp` command line (see the contract's command-line table).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use hostdp::model::exit;
use hostdp::runner;

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

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate scenario files and the fixtures they name, without privileges.
    Check {
        /// Validate policies against this CRD manifest (`kubectl get crd
        /// ciliumnetworkpolicies.cilium.io -o yaml`) instead of the embedded v1.14.4 schema of its
        /// kind; give it twice for both policy kinds.
        #[arg(long = "crd", value_name = "FILE")]
        crds: Vec<PathBuf>,
        /// Files or folders (default: scenarios/).
        paths: Vec<PathBuf>,
    },
    /// Run scenarios (files or folders; default scenarios/).
    Run {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Run inside a VM booted with this kernel (`debian-6.1`, `debian-6.12`, a vmlinuz path),
        /// or `host` for this machine's kernel. Repeat for a kernel matrix.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Exit 0 even when scenarios were skipped.
        #[arg(long)]
        allow_skips: bool,
        /// Say where the compiled objects and node_config.h headers are (they are kept in the
        /// template cache, `HOSTDP_CACHE_DIR` or target/hostdp-cache; also said after a failure).
        #[arg(long)]
        keep: bool,
        /// Scenarios run at once (default: the number of CPUs).
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// Write the JSON record to this file as well (whatever --format says).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Run every file under this profile instead of its own (to observe, e.g. for the
        /// behaviour table; expectations written for another profile may fail).
        #[arg(long)]
        profile: Option<String>,
        /// Validate policies against this CRD manifest instead of the embedded v1.14.4 schema of
        /// its kind (as for `check`).
        #[arg(long = "crd", value_name = "FILE")]
        crds: Vec<PathBuf>,
        paths: Vec<PathBuf>,
    },
    /// List every tc, tcx and XDP attachment on every link of a namespace (read-only).
    Inspect {
        #[arg(long)]
        netns: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Also read each endpoint's policy map through the attached programs (JSON:
        /// `{"attachments": [...], "maps": [...]}`).
        #[arg(long)]
        maps: bool,
    },
    /// Which devices a profile's loader would select on this node's real links, and what it
    /// would attach there, beside what is attached now (read-only).
    Explain {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "v1.14.4")]
        profile: String,
        #[arg(long)]
        netns: Option<String>,
    },
    /// Render a JSON result record as the README's behaviour table (markdown): per scenario,
    /// the devices selected at `start` and what landed on each named device.
    Table {
        /// Records written by `hostdp run --format json` (or `--output`); several (one per
        /// profile, from `run --profile`) give a column per record.
        #[arg(required = true)]
        records: Vec<PathBuf>,
        /// Devices to show, comma-separated.
        #[arg(long, default_value = "bond0.212,bond0,eth0,eth1")]
        devices: String,
    },
    /// Run scenarios under several upstream profiles and show, per step and device, where
    /// the attachments differ (exit 0: no difference, 1: some).
    Diff {
        /// Profiles to compare, comma-separated (v1.14.4,v1.15,v1.16).
        #[arg(long, value_delimiter = ',', default_value = "v1.14.4,v1.15,v1.16")]
        profiles: Vec<String>,
        /// Compare the mechanism (tc, tcx, xdp mode) too, not only the programs.
        #[arg(long)]
        mechanism: bool,
        /// Run inside a VM booted with this kernel, as for `run --kernel`.
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        paths: Vec<PathBuf>,
    },
    /// Remove what dead hostdp runs left behind (namespaces, bpffs mounts); live runs are kept.
    Gc,
    /// Leak ledger: snapshot what the harness could leave behind, and compare with a snapshot.
    Ledger {
        #[command(subcommand)]
        cmd: LedgerCmd,
    },
}

#[derive(Subcommand)]
enum LedgerCmd {
    /// Write a snapshot of the machine to FILE.
    Save { file: PathBuf },
    /// Compare the machine with FILE; exit 1 and list the items on a difference.
    Diff {
        file: PathBuf,
        /// Seconds to keep looking while they differ (deleted namespaces free programs late).
        #[arg(long, default_value = "10")]
        wait: u64,
    },
    /// Print the machine's snapshot.
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The environment is read here, once: where the cache is, which checkout (if any) this runs from.
    hostdp::paths::install(hostdp::paths::Paths::from_env());
    let crds = match &cli.cmd {
        Cmd::Check { crds, .. } | Cmd::Run { crds, .. } => crds.as_slice(),
        _ => &[],
    };
    if let Err(code) = runner::use_crds(crds) {
        return ExitCode::from(code as u8);
    }
    let code = match cli.cmd {
        Cmd::Check { paths, .. } => runner::cli_check(&default_paths(paths)),
        Cmd::Run { format, kernels, allow_skips, keep, jobs, output, profile, paths, .. } => {
            runner::cli_run(&runner::RunArgs {
                json: format == Format::Json,
                kernels,
                allow_skips,
                keep,
                jobs,
                output,
                profile,
                paths: default_paths(paths),
            })
        }
        Cmd::Inspect { netns, format, maps: false } => runner::cli_inspect(netns.as_deref(), format == Format::Json),
        Cmd::Inspect { netns, format, maps: true } => {
            runner::cli_inspect_maps(netns.as_deref(), format == Format::Json)
        }
        Cmd::Explain { config, profile, netns } => runner::cli_explain(&config, &profile, netns.as_deref()),
        Cmd::Table { records, devices } => runner::cli_table(&records, &devices),
        Cmd::Diff { profiles, mechanism, kernel, format, paths } => hostdp::diff::cli(&hostdp::diff::DiffArgs {
            profiles,
            mechanism,
            kernel,
            json: format == Format::Json,
            paths,
        }),
        Cmd::Gc => runner::cli_gc(),
        Cmd::Ledger { cmd: LedgerCmd::Save { file } } => hostdp::sys::ledger::cli_save(&file),
        Cmd::Ledger { cmd: LedgerCmd::Diff { file, wait } } => {
            hostdp::sys::ledger::cli_diff(&file, std::time::Duration::from_secs(wait))
        }
        Cmd::Ledger { cmd: LedgerCmd::Show } => hostdp::sys::ledger::cli_show(),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn default_paths(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    if paths.is_empty() {
        vec![PathBuf::from("scenarios")]
    } else {
        paths
    }
}

#[allow(dead_code)]
const _: i32 = exit::OK;
