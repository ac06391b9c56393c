//! `hostdp explain`: which devices a profile's loader would select on a namespace's real links,
//! and what it would attach there, beside what is attached now (read-only).

use std::path::PathBuf;

use crate::model::exit;

/// Arguments of `hostdp explain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long, default_value = "v1.14.4")]
    pub profile: String,
    #[arg(long)]
    pub netns: Option<String>,
}

/// `hostdp explain`.
pub fn exec(args: Args) -> i32 {
    let (config, profile, netns) = (&args.config, args.profile.as_str(), args.netns.as_deref());
    match crate::explain::explain(config, profile, netns) {
        Ok(text) => {
            print!("{text}");
            exit::OK
        }
        Err(e) => {
            eprintln!("hostdp explain: {e}");
            exit::INVALID
        }
    }
}
