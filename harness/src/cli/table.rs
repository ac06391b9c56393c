//! `hostdp table`: JSON result records as the README's behaviour table (markdown).

use std::path::PathBuf;

use crate::model::exit;
use crate::model::record::{self, RunRecord};

/// Arguments of `hostdp table`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Records written by `hostdp run --format json` (or `--output`, `--json`); shards of one
    /// run (`run --partition`, or a kernel each) are merged into one; several runs (one per
    /// profile, from `run --profile`) give a column per run.
    #[arg(required = true)]
    pub records: Vec<PathBuf>,
    /// Devices to show, comma-separated.
    #[arg(long, default_value = "bond0.212,bond0,eth0,eth1")]
    pub devices: String,
}

/// `hostdp table`: the records' shards merged ([`record::merge_shards`]); one run gives a
/// column per device, several (one per profile) a column per run.
pub fn exec(args: Args) -> i32 {
    let recs = match read_records("table", &args.records) {
        Ok(r) => record::merge_shards(r),
        Err(code) => return code,
    };
    let devs: Vec<&str> = args.devices.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if recs.len() == 1 {
        out!("{}", record::behaviour_table(&recs[0], &devs));
    } else {
        out!("{}", record::profile_table(&recs, &devs));
    }
    exit::OK
}

/// Reads result records; an unreadable file or one that is not a record is said (`file:line:col`
/// for the latter) and gives exit status 2.
pub fn read_records(cmd: &str, files: &[PathBuf]) -> Result<Vec<RunRecord>, i32> {
    let mut recs = Vec::new();
    for record in files {
        let text = std::fs::read_to_string(record).map_err(|e| {
            errln!("hostdp {cmd}: cannot read {}: {e}", record.display());
            exit::INVALID
        })?;
        let rec = serde_json::from_str::<RunRecord>(&text).map_err(|e| {
            errln!("{}:{}:{}: not a hostdp result record: {e}", record.display(), e.line(), e.column());
            exit::INVALID
        })?;
        recs.push(rec);
    }
    Ok(recs)
}
