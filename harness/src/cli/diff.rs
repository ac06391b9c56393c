//! `hostdp diff`: the same scenarios under several profiles, where the attachments differ.

use std::path::PathBuf;

use super::Format;
use crate::diff::{run, table, DiffArgs, DiffError, ScenarioDiff};
use crate::model::exit;
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
    if let Err(code) = runner::valid_files_as_root("diff", &args.paths) {
        return code;
    }
    crate::sys::topology::install_signal_cleanup();
    let diffs = match run(args) {
        Ok(d) => d,
        Err(e @ (DiffError::Profile(_) | DiffError::TooFew(_) | DiffError::Scenario(_))) => {
            eprintln!("{e}");
            return exit::INVALID;
        }
        Err(e) => {
            eprintln!("{e}");
            return exit::ENVIRONMENT;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "scenarios": diffs })).expect("serialise the diff")
        );
    } else {
        print!("{}", table(&diffs));
    }
    if diffs.iter().any(ScenarioDiff::differs) {
        exit::FAILED
    } else {
        exit::OK
    }
}
