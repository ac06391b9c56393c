//! `hostdp profiles`: the upstream behaviour profiles and the table of named upstream changes
//! they are made of (release by release, what changed), as markdown.

use crate::model::exit;
use crate::model::profile;

/// `hostdp profiles`.
pub fn exec() -> i32 {
    out!("{}", profile::render_table());
    exit::OK
}
