//! What the test modules share: the root check and a namespace that is deleted when dropped.

use hostdp::sys::netns;

/// Whether the tests run as root; says "skipping: needs root" when not.
pub fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping: needs root (network namespaces, bpf)");
        false
    }
}

/// A namespace, by name, deleted when the guard goes out of scope (also on panic).
pub struct NsGuard(pub String);

impl NsGuard {
    /// The namespace (it exists while the guard lives).
    pub fn ns(&self) -> netns::Netns {
        netns::Netns::open(&self.0).expect("the guarded namespace exists")
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.0);
    }
}
