//! A process-wide pool of empty level vectors. The parser takes its diff vectors from here
//! and the conductor gives them back once an event is done with them, so a steady stream
//! of diffs allocates nothing. Lock-free; a miss simply allocates.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

use super::Level;

/// Vectors kept at most; beyond this, returned vectors are freed.
const POOLED: usize = 16_384;
/// Vectors larger than this (REST snapshots) are freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 1024;

fn pool() -> &'static ArrayQueue<Vec<Level>> {
    static POOL: OnceLock<ArrayQueue<Vec<Level>>> = OnceLock::new();
    POOL.get_or_init(|| ArrayQueue::new(POOLED))
}

/// An empty vector with room for at least `min_capacity` levels, reused when one is pooled.
#[inline]
pub fn take_levels(min_capacity: usize) -> Vec<Level> {
    match pool().pop() {
        Some(mut v) => {
            v.reserve(min_capacity);
            v
        }
        None => {
            MISSES.fetch_add(1, Ordering::Relaxed);
            Vec::with_capacity(min_capacity)
        }
    }
}

static MISSES: AtomicU64 = AtomicU64::new(0);

/// Vectors allocated because the pool was empty, since the process started.
pub fn misses() -> u64 {
    MISSES.load(Ordering::Relaxed)
}

/// Returns a vector to the pool (cleared); vectors without capacity or too large are freed.
#[inline]
pub fn give_levels(mut v: Vec<Level>) {
    if v.capacity() == 0 || v.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    v.clear();
    let _ = pool().push(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_come_back_empty_with_their_capacity() {
        let mut v = take_levels(32);
        v.push(Default::default());
        let cap = v.capacity();
        give_levels(v);
        // Other tests share the pool; whatever comes back is empty and big enough.
        let w = take_levels(8);
        assert!(w.is_empty() && w.capacity() >= 8);
        assert!(cap >= 32);
        give_levels(Vec::with_capacity(MAX_KEPT_CAPACITY + 1));
    }
}
