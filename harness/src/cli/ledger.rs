//! `hostdp ledger`: a snapshot of what the harness could leave behind on the machine, and the
//! comparison with an earlier one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::exit;
use crate::sys::ledger::{diff_settled, load, save, snapshot, summary};

/// `hostdp ledger` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
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

/// `hostdp ledger`.
pub fn exec(cmd: Cmd) -> i32 {
    match cmd {
        Cmd::Save { file } => save_to(&file),
        Cmd::Diff { file, wait } => diff_with(&file, Duration::from_secs(wait)),
        Cmd::Show => show(),
    }
}

/// `hostdp ledger save FILE`: exit 0, or 4 when the file cannot be written.
pub fn save_to(path: &Path) -> i32 {
    let s = snapshot();
    match save(path, &s) {
        Ok(()) => {
            outln!("hostdp ledger: saved {} to {}", summary(&s), path.display());
            exit::OK
        }
        Err(e) => {
            errln!("hostdp {e}");
            exit::ENVIRONMENT
        }
    }
}

/// `hostdp ledger diff FILE`: exit 0 when nothing differs (after waiting up to `wait` for the
/// kernel to free programs), 1 when something was left behind or removed, 2 for a bad file.
pub fn diff_with(path: &Path, wait: Duration) -> i32 {
    let before = match load(path) {
        Ok(s) => s,
        Err(e) => {
            errln!("hostdp {e}");
            return exit::INVALID;
        }
    };
    let d = diff_settled(&before, wait);
    if d.is_empty() {
        outln!("hostdp ledger: no difference from {} ({} item(s))", path.display(), before.items.len());
        out!("{d}");
        exit::OK
    } else {
        outln!(
            "hostdp ledger: {} item(s) left behind, {} removed, compared with {}:",
            d.added.len(),
            d.removed.len(),
            path.display()
        );
        out!("{d}");
        exit::FAILED
    }
}

/// `hostdp ledger show`: prints the machine's snapshot.
pub fn show() -> i32 {
    let s = snapshot();
    for i in &s.items {
        let mark = if s.foreign.contains(i) { "  (other live run)" } else { "" };
        outln!("{i}{mark}");
    }
    for n in &s.notes {
        outln!("# {n}");
    }
    outln!("# {}", summary(&s));
    exit::OK
}
