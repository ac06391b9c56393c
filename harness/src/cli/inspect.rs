//! `hostdp inspect`: every tc, tcx and XDP attachment of a namespace (and, with `--maps`, the
//! policy maps their programs reference), read-only.

use super::Format;
use crate::model::exit;
use crate::model::record;
use crate::sys::{inspect, policymap};

/// Arguments of `hostdp inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub netns: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Also read each endpoint's policy map through the attached programs (JSON:
    /// `{"attachments": [...], "maps": [...]}`).
    #[arg(long)]
    pub maps: bool,
}

/// `hostdp inspect`.
pub fn exec(args: Args) -> i32 {
    let json = args.format == Format::Json;
    if args.maps {
        maps(args.netns.as_deref(), json)
    } else {
        attachments(args.netns.as_deref(), json)
    }
}

/// `hostdp inspect`.
fn attachments(netns: Option<&str>, json: bool) -> i32 {
    let ns = match netns {
        Some(n) => match crate::sys::netns::Netns::open(n) {
            Ok(ns) => Some(ns),
            Err(e) => {
                errln!("hostdp inspect: {e}");
                return exit::INVALID;
            }
        },
        None => None,
    };
    let res = match &ns {
        Some(ns) => inspect::inspect_netns(ns),
        None => inspect::inspect_current(),
    };
    match res {
        Ok(atts) => {
            if json {
                outln!("{}", serde_json::json!({ "attachments": atts }));
            } else if atts.is_empty() {
                outln!("no attachments");
            } else {
                for a in &atts {
                    outln!("{:<16} {:<8} {}  id {}", a.device, a.hook.as_str(), record::fmt_att(a), a.prog_id);
                }
            }
            exit::OK
        }
        Err(e) => {
            errln!("hostdp inspect: {e}");
            exit::FAILED
        }
    }
}

/// `hostdp inspect --maps`: the attachments and the policy maps their programs reference.
fn maps(netns: Option<&str>, json: bool) -> i32 {
    let res = match netns {
        Some(n) => match crate::sys::netns::Netns::open(n) {
            Ok(ns) => inspect::inspect_netns(&ns),
            Err(e) => {
                errln!("hostdp inspect: {e}");
                return exit::INVALID;
            }
        },
        None => inspect::inspect_current(),
    };
    let atts = match res {
        Ok(a) => a,
        Err(e) => {
            errln!("hostdp inspect: {e}");
            return exit::FAILED;
        }
    };
    match policymap::read_policy_maps(&atts) {
        Ok(maps) if json => outln!("{}", serde_json::json!({ "attachments": atts, "maps": maps })),
        Ok(maps) => out!("{}", policymap::render_table(&maps)),
        Err(e) => {
            errln!("hostdp inspect: {e}");
            return exit::FAILED;
        }
    }
    exit::OK
}
