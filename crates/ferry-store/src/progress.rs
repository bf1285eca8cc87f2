//! A handle through which a long engine operation (garbage collection and its
//! merges) reports how far it got and learns that it should stop.
//!
//! The operation adds to `total` as it plans work and to `done` as it
//! finishes it, and calls [`Progress::checkpoint`] at every point where it
//! may stop with the store correct (between merge chunks, between garbage
//! collection steps). The caller reads the counters from any thread and sets
//! the cancel flag with [`Progress::cancel`]. Counters are atomics: reading
//! them never waits for the operation.
//!
//! What it must not do: stop an operation anywhere but at a checkpoint, or
//! hold any engine lock while the checkpoint hook runs.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A hook run at every checkpoint, before the cancel flag is read.
pub type CheckpointHook = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Shared progress counters and a cancel flag. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct Progress {
    inner: Arc<Counters>,
    hook: Option<CheckpointHook>,
}

#[derive(Default)]
struct Counters {
    done: AtomicU64,
    total: AtomicU64,
    cancel: AtomicBool,
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("done", &self.done())
            .field("total", &self.total())
            .field("cancelled", &self.is_cancelled())
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress::default()
    }

    /// The same progress with `hook` run at every checkpoint (the daemon
    /// uses it for a test-only pause; a test can cancel at an exact point).
    pub fn with_hook(mut self, hook: CheckpointHook) -> Progress {
        self.hook = Some(hook);
        self
    }

    /// Units of work finished so far (blocks, for garbage collection).
    pub fn done(&self) -> u64 {
        self.inner.done.load(Ordering::Relaxed)
    }

    /// Units of work planned so far; grows as the operation plans more.
    pub fn total(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }

    pub fn add_done(&self, n: u64) {
        self.inner.done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_total(&self, n: u64) {
        self.inner.total.fetch_add(n, Ordering::Relaxed);
    }

    /// Replaces the planned total (an operation that re-estimates what is left).
    pub fn set_total(&self, n: u64) {
        self.inner.total.store(n, Ordering::Relaxed);
    }

    /// Asks the operation to stop at its next checkpoint.
    pub fn cancel(&self) {
        self.inner.cancel.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.load(Ordering::Acquire)
    }

    /// Called by the operation where stopping leaves the store correct: runs
    /// the hook, then says whether to stop.
    pub fn checkpoint(&self) -> bool {
        if let Some(hook) = &self.hook {
            hook(self);
        }
        self.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_counters_and_the_flag() {
        let p = Progress::new();
        let q = p.clone();
        p.add_total(10);
        q.add_done(3);
        assert_eq!((q.total(), p.done()), (10, 3));
        assert!(!p.checkpoint());
        q.cancel();
        assert!(p.checkpoint());
    }

    #[test]
    fn the_hook_runs_at_each_checkpoint_and_may_cancel() {
        let p = Progress::new().with_hook(Arc::new(|p: &Progress| {
            if p.done() >= 2 {
                p.cancel();
            }
        }));
        p.add_done(1);
        assert!(!p.checkpoint());
        p.add_done(1);
        assert!(p.checkpoint());
    }
}
