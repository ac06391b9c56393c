//! Named network namespaces, created and entered without forking.
//!
//! `setns` moves only the calling thread, so every kernel call for a namespace runs on an OS
//! thread that entered it ([`Netns::run`]); a netlink socket opened there stays in that
//! namespace. Namespaces are bind-mounted under `/run/netns` like iproute2 does, so
//! `ip netns exec NAME tc filter show ...` sees them too.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Where named namespaces live (iproute2's convention).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Every namespace the harness creates has a name starting with this prefix.
pub const PREFIX: &str = "hostdp-";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("create namespace {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: NsCause,
    },
    #[error("enter namespace {name}: {source}")]
    Enter {
        name: String,
        #[source]
        source: NsCause,
    },
    #[error("delete namespace {name}: {source}")]
    Delete {
        name: String,
        #[source]
        source: NsCause,
    },
    #[error("namespace {0} does not exist")]
    Missing(String),
}

/// A named network namespace. Dropping it does not delete it: ownership and teardown are the
/// topology's business ([`crate::sys::topology`]), which deletes explicitly and on drop of the node.
/// The call under a [`NetnsError`].
#[derive(Debug, thiserror::Error)]
pub enum NsCause {
    /// The namespace file itself (open, remove).
    #[error(transparent)]
    File(std::io::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("namespace thread panicked")]
    Panicked,
    /// A step of setting the namespace up that is not a namespace call (bringing `lo` up).
    #[error(transparent)]
    Setup(Box<dyn std::error::Error + Send + Sync>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a new network namespace named `name` (which should start with [`PREFIX`]) holding
    /// only `lo`, down as `ip netns add` leaves it (the topology brings it up).
    pub fn create(name: &str) -> Result<Netns, NetnsError> {
        let err = |source: NsCause| NetnsError::Create { name: name.to_string(), source };
        ensure_run_dir().map_err(err)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| err(NsCause::Io { what: format!("cannot create {}", path.display()), source: e }))?;
        // A fresh thread unshares, and the bind mount keeps the namespace alive after it ends.
        let p = path.clone();
        let res = std::thread::spawn(move || -> Result<(), NsCause> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NsCause::Sys { what: "unshare".into(), source: e })?;
            let own = "/proc/thread-self/ns/net";
            mount(Some(own), &p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| NsCause::Sys { what: format!("bind mount onto {}", p.display()), source: e })
        })
        .join()
        .map_err(|_| err(NsCause::Panicked))?;
        if let Err(m) = res {
            let _ = std::fs::remove_file(&path);
            return Err(err(m));
        }
        Ok(Netns { name: name.to_string() })
    }

    /// An existing namespace by name.
    pub fn open(name: &str) -> Result<Netns, NetnsError> {
        if Path::new(NETNS_RUN_DIR).join(name).exists() {
            Ok(Netns { name: name.to_string() })
        } else {
            Err(NetnsError::Missing(name.to_string()))
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// Runs `f` on a new OS thread that has entered this namespace, and returns its result.
    /// A panic inside `f` is propagated to the caller.
    pub fn run<R, F>(&self, f: F) -> Result<R, NetnsError>
    where
        R: Send,
        F: FnOnce() -> R + Send,
    {
        let file = File::open(self.path())
            .map_err(|e| NetnsError::Enter { name: self.name.clone(), source: NsCause::File(e) })?;
        let clock = crate::sys::timing::current();
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let _clock = crate::sys::timing::enter(clock);
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
                    name: self.name.clone(),
                    source: NsCause::Sys { what: "setns".into(), source: e },
                })?;
                Ok(f())
            });
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Deletes the namespace's name; the kernel frees it once no process or fd holds it.
    pub fn delete(&self) -> Result<(), NetnsError> {
        delete_named(&self.name)
    }
}

/// Unmounts and removes `/run/netns/NAME`.
pub fn delete_named(name: &str) -> Result<(), NetnsError> {
    let path = Path::new(NETNS_RUN_DIR).join(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(NetnsError::Delete {
                name: name.to_string(),
                source: NsCause::Sys { what: "umount".into(), source: e },
            })
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetnsError::Delete { name: name.to_string(), source: NsCause::File(e) }),
    }
}

/// Names of all namespaces under `/run/netns` (any owner).
pub fn list_named() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(NETNS_RUN_DIR)
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Makes `/run/netns` exist and be a shared mount point, as iproute2 does, so namespaces
/// mounted there are visible from other mount namespaces too.
fn ensure_run_dir() -> Result<(), NsCause> {
    std::fs::create_dir_all(NETNS_RUN_DIR)
        .map_err(|e| NsCause::Io { what: format!("cannot create {NETNS_RUN_DIR}"), source: e })?;
    let dir = Path::new(NETNS_RUN_DIR);
    match mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then make it shared.
            mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .map_err(|e| NsCause::Sys { what: format!("bind {NETNS_RUN_DIR}"), source: e })?;
            mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>)
                .map_err(|e| NsCause::Sys { what: format!("make {NETNS_RUN_DIR} shared"), source: e })
        }
        Err(e) => Err(NsCause::Sys { what: format!("make {NETNS_RUN_DIR} shared"), source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn create_enter_delete() {
        if !is_root() {
            errln!("skipping: needs root");
            return;
        }
        let name = format!("{PREFIX}unit-{}", std::process::id());
        let ns = Netns::create(&name).unwrap();
        assert!(list_named().contains(&name));
        // Inside the namespace only `lo` exists.
        let links = ns.run(|| std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default()).unwrap();
        let _ = links;
        let names = ns
            .run(|| {
                nix::net::if_::if_nameindex()
                    .unwrap()
                    .iter()
                    .map(|i| i.name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(names, vec!["lo".to_string()]);
        ns.delete().unwrap();
        assert!(!list_named().contains(&name));
    }
}
