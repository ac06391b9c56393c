//! `hostdp gc`: removes what dead hostdp runs left behind; live runs are kept.

use crate::model::exit;
use crate::sys::topology;

/// `hostdp gc`.
pub fn exec() -> i32 {
    let removed = topology::cleanup_stale();
    for r in &removed {
        outln!("removed {r}");
    }
    outln!("{} stale item(s) removed", removed.len());
    exit::OK
}
