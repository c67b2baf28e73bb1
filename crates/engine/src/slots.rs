//! Build slots shared by several runs at once (`kiln serve` runs up to
//! `max_runs` of them): a run's driver takes slots from the pool for each
//! batch it starts and gives them back when the batch ends, so that the
//! machine never builds more than the pool's limit in all, however many runs
//! are in progress. `kiln run` has no pool; its `--max-jobs` is the limit.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// A counted set of build slots.
#[derive(Debug)]
pub struct SlotPool {
    limit: usize,
    used: AtomicUsize,
    freed: Notify,
}

impl SlotPool {
    /// A pool of `limit` slots (at least one).
    pub fn new(limit: usize) -> Self {
        SlotPool {
            limit: limit.max(1),
            used: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// Take up to `want` slots; returns how many were taken (0 when the
    /// pool is exhausted).
    pub fn take(&self, want: usize) -> usize {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let n = want.min(self.limit.saturating_sub(used));
            if n == 0 {
                return 0;
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return n,
                Err(now) => used = now,
            }
        }
    }

    /// Give back `n` slots taken before, and wake the drivers waiting.
    pub fn give(&self, n: usize) {
        if n == 0 {
            return;
        }
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
        self.freed.notify_waiters();
    }

    /// Resolves when slots are given back (a driver also polls on its
    /// progress tick, so a wake-up lost to a race costs at most a tick).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    /// Slots in use now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The pool's size.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_up_to_the_limit_and_given_back() {
        let pool = SlotPool::new(3);
        assert_eq!(pool.take(2), 2);
        assert_eq!(pool.take(2), 1, "only one left");
        assert_eq!(pool.take(1), 0, "exhausted");
        assert_eq!(pool.in_use(), 3);
        pool.give(2);
        assert_eq!(pool.in_use(), 1);
        assert_eq!(pool.take(5), 2);
        pool.give(3);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(SlotPool::new(0).limit(), 1);
    }

    #[test]
    fn concurrent_takers_never_exceed_the_limit() {
        let pool = std::sync::Arc::new(SlotPool::new(4));
        let peak = std::sync::Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (pool, peak) = (pool.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let n = pool.take(2);
                        peak.fetch_max(pool.in_use(), Ordering::Relaxed);
                        pool.give(n);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 4);
        assert_eq!(pool.in_use(), 0);
    }
}
