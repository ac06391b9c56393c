//! `hostdp table`: a JSON result record as the README's behaviour table (markdown).

use std::path::PathBuf;

use crate::model::exit;
use crate::model::record::{self, RunRecord};

/// Arguments of `hostdp table`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Records written by `hostdp run --format json` (or `--output`); several (one per
    /// profile, from `run --profile`) give a column per record.
    #[arg(required = true)]
    pub records: Vec<PathBuf>,
    /// Devices to show, comma-separated.
    #[arg(long, default_value = "bond0.212,bond0,eth0,eth1")]
    pub devices: String,
}

/// `hostdp table`: one record gives a column per device; several (one per profile) give a
/// column per record.
pub fn exec(args: Args) -> i32 {
    let (records, devices) = (&args.records, args.devices.as_str());
    let mut recs = Vec::new();
    for record in records {
        let text = match std::fs::read_to_string(record) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("hostdp table: cannot read {}: {e}", record.display());
                return exit::INVALID;
            }
        };
        match serde_json::from_str::<RunRecord>(&text) {
            Ok(r) => recs.push(r),
            Err(e) => {
                eprintln!("{}:{}:{}: not a hostdp result record: {e}", record.display(), e.line(), e.column());
                return exit::INVALID;
            }
        }
    }
    let devs: Vec<&str> = devices.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if recs.len() == 1 {
        print!("{}", record::behaviour_table(&recs[0], &devs));
    } else {
        print!("{}", record::profile_table(&recs, &devs));
    }
    exit::OK
}
