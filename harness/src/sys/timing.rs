//! Where a scenario's time goes: wall-clock totals per phase, gathered on the thread that runs
//! the scenario and on the namespace threads it spawns ([`crate::sys::netns::Netns::run`] hands the
//! clock over), so parallel scenarios never mix their figures.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostdp_model::record::Phases;

/// What is timed. `Agent` and `Execute` are raw totals the record's phases are derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Namespaces, links, addresses, routes, pods (the topology).
    NamespacesAndLinks,
    /// A whole agent step (config, detection, compile, load, attach).
    Agent,
    /// Topology changes made by a step (inside an `Agent` total).
    StepTopology,
    /// `attach::execute` and the foreign attachments: compile, load, attach.
    Execute,
    /// Compiling templates (cache look-ups included).
    Compile,
    /// Reading back what is attached.
    Readback,
    /// Deleting the node.
    Teardown,
}

const PHASES: usize = 7;

/// Per-scenario accumulator; shared between the threads working for one scenario.
#[derive(Debug, Default)]
pub struct Clock {
    nanos: [AtomicU64; PHASES],
    clang: AtomicU64,
}

impl Clock {
    pub fn new() -> Arc<Clock> {
        Arc::new(Clock::default())
    }

    fn ms(&self, p: Phase) -> f64 {
        self.nanos[p as usize].load(Ordering::Relaxed) as f64 / 1e6
    }

    /// The record's phases. Nested totals are taken apart: an agent step's own share is what
    /// its compile and attach work leave, and attach's is what compiling leaves.
    pub fn phases(&self) -> Phases {
        let (agent, execute, compile) = (self.ms(Phase::Agent), self.ms(Phase::Execute), self.ms(Phase::Compile));
        let step_topology = self.ms(Phase::StepTopology);
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        Phases {
            namespaces_and_links: r(self.ms(Phase::NamespacesAndLinks) + step_topology),
            config_and_devices: r((agent - step_topology - execute).max(0.0)),
            compile: r(compile),
            load_and_attach: r((execute - compile).max(0.0)),
            readback: r(self.ms(Phase::Readback)),
            teardown: r(self.ms(Phase::Teardown)),
            clang_invocations: self.clang.load(Ordering::Relaxed),
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Clock>>> = const { RefCell::new(None) };
}

/// The clock of the calling thread, to hand to a thread that works for the same scenario.
pub fn current() -> Option<Arc<Clock>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Restores the previous clock of the thread when dropped.
pub struct Entered(Option<Arc<Clock>>);

impl Drop for Entered {
    fn drop(&mut self) {
        let prev = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

/// Makes `clock` the calling thread's clock until the guard is dropped.
#[must_use]
pub fn enter(clock: Option<Arc<Clock>>) -> Entered {
    Entered(CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), clock)))
}

/// Adds `d` to `phase` of the thread's clock (nothing without one).
pub fn add(phase: Phase, d: Duration) {
    CURRENT.with(|c| {
        if let Some(clock) = c.borrow().as_ref() {
            clock.nanos[phase as usize].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        }
    })
}

/// Runs `f`, adding its wall time to `phase`.
pub fn time<T>(phase: Phase, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    add(phase, t.elapsed());
    out
}

/// Counts one clang run against the thread's clock.
pub fn count_clang() {
    CURRENT.with(|c| {
        if let Some(clock) = c.borrow().as_ref() {
            clock.clang.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_phases_are_taken_apart() {
        let clock = Clock::new();
        let _g = enter(Some(clock.clone()));
        add(Phase::Agent, Duration::from_millis(10));
        add(Phase::Execute, Duration::from_millis(7));
        add(Phase::Compile, Duration::from_millis(3));
        count_clang();
        let p = clock.phases();
        assert_eq!((p.config_and_devices, p.load_and_attach, p.compile, p.clang_invocations), (3.0, 4.0, 3.0, 1));
        assert_eq!(p.total(), 10.0);
    }

    #[test]
    fn the_clock_follows_threads_only_when_handed_over() {
        let clock = Clock::new();
        let g = enter(Some(clock.clone()));
        let handed = current();
        std::thread::spawn(move || {
            add(Phase::Readback, Duration::from_millis(1));
            let _g = enter(handed);
            add(Phase::Readback, Duration::from_millis(2));
        })
        .join()
        .unwrap();
        drop(g);
        add(Phase::Readback, Duration::from_millis(4));
        assert_eq!(clock.phases().readback, 2.0);
        assert!(current().is_none());
    }
}
