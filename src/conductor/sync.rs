//! Binance's documented procedure for a correct local spot book, one instrument at a time.
//!
//! 1. Open the stream and buffer the diffs.
//! 2. Fetch a depth snapshot.
//! 3. If the snapshot is older than the first buffered diff (`lastUpdateId + 1 < U`),
//!    go back to 2: the snapshot predates the subscription and is never used.
//! 4. Drop every buffered diff with `u <= lastUpdateId`.
//! 5. The first diff applied satisfies `U <= lastUpdateId + 1 <= u`.
//! 6. Afterwards each diff satisfies `U == previous u + 1`; anything else is a gap, and the
//!    book goes back to 1 (status `syncing`) without touching any other instrument.

use std::collections::VecDeque;

use super::book::{OrderBook, Side};
use crate::schema::{BookDelta, BookSnapshot, Quality};

/// Diffs kept while waiting for a snapshot; beyond this the oldest are dropped (the next
/// snapshot will be newer than them anyway).
const MAX_BUFFERED: usize = 8192;

/// Why a book lost sync. `Copy`, built on the hot path without formatting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// Step 6: a diff did not start right after the previous one.
    #[error("update-id gap: expected U={expected}, got U={got}")]
    Gap { expected: u64, got: u64 },
    /// Step 3: the snapshot is older than the buffered diffs.
    #[error("snapshot {last_update_id} older than first buffered diff U={first}")]
    SnapshotTooOld { last_update_id: u64, first: u64 },
    /// The diff stream was interrupted (reconnect): diffs were missed.
    #[error("diff stream interrupted")]
    StreamReset,
    /// A diff produced a crossed book: the book cannot be trusted.
    #[error("book crossed after update {update_id}")]
    Crossed { update_id: u64 },
}

/// What the caller should do after feeding the state machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    /// The book content changed.
    pub changed: bool,
    /// The status changed (publish it now, unthrottled).
    pub status_changed: bool,
    /// Ask the REST stage for a snapshot.
    pub request_snapshot: bool,
    /// The diff was older than the book (`u <=` last applied) and ignored.
    pub ignored: bool,
    /// Sync was lost, and why.
    pub lost: Option<SyncError>,
}

/// One instrument's book and where it stands in the procedure.
#[derive(Debug, Default)]
pub struct BookSync {
    pub book: OrderBook,
    pub status: SyncStatus,
    buffer: VecDeque<BookDelta>,
    /// A snapshot that arrived before any diff: held until a diff shows whether it is usable.
    held: Option<BookSnapshot>,
    awaiting_snapshot: bool,
    pub resyncs: u64,
}

/// `syncing` | `live` | `stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncStatus {
    #[default]
    Syncing,
    Live,
    Stale,
}

impl SyncStatus {
    pub fn quality(self) -> Quality {
        match self {
            SyncStatus::Syncing => Quality::Syncing,
            SyncStatus::Live => Quality::Live,
            SyncStatus::Stale => Quality::Stale,
        }
    }
}

impl BookSync {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the book content may be published as in sync.
    pub fn in_sync(&self) -> bool {
        matches!(self.status, SyncStatus::Live | SyncStatus::Stale)
    }

    /// Feeds one diff.
    pub fn on_delta(&mut self, d: &BookDelta) -> Step {
        match self.status {
            SyncStatus::Syncing => self.buffer_delta(d),
            SyncStatus::Live | SyncStatus::Stale => {
                let mut step = Step::default();
                if self.status == SyncStatus::Stale {
                    self.status = SyncStatus::Live;
                    step.status_changed = true;
                }
                let prev = self.book.last_update_id;
                if d.final_update_id <= prev {
                    step.ignored = true;
                    return step;
                }
                // Step 6: each diff starts right after the previous one.
                if d.first_update_id != prev + 1 {
                    let e = SyncError::Gap {
                        expected: prev + 1,
                        got: d.first_update_id,
                    };
                    let mut s = self.lose_sync(e);
                    let b = self.buffer_delta(d);
                    s.request_snapshot |= b.request_snapshot;
                    return s;
                }
                self.apply(d);
                step.changed = true;
                if self.book.is_crossed() {
                    return self.lose_sync(SyncError::Crossed {
                        update_id: d.final_update_id,
                    });
                }
                step
            }
        }
    }

    /// Feeds one REST snapshot.
    pub fn on_snapshot(&mut self, s: &BookSnapshot) -> Step {
        if self.in_sync() {
            // A scheduled refresh: the live book is already ahead of or equal to it.
            return Step::default();
        }
        self.awaiting_snapshot = false;
        if self.buffer.is_empty() {
            // No diff yet: cannot tell whether the snapshot predates the subscription.
            self.held = Some(s.clone());
            return Step::default();
        }
        self.try_snapshot(s)
    }

    /// Marks a live book stale (no diff within the staleness window).
    pub fn mark_stale(&mut self) -> Step {
        if self.status == SyncStatus::Live {
            self.status = SyncStatus::Stale;
            return Step {
                status_changed: true,
                ..Step::default()
            };
        }
        Step::default()
    }

    /// Forgets the book and starts over (e.g. after a reconnect).
    pub fn lose_sync(&mut self, e: SyncError) -> Step {
        let was = self.status;
        self.status = SyncStatus::Syncing;
        self.book.clear();
        self.buffer.clear();
        self.held = None;
        self.awaiting_snapshot = false;
        self.resyncs += 1;
        Step {
            changed: true,
            status_changed: was != SyncStatus::Syncing,
            request_snapshot: false,
            ignored: false,
            lost: Some(e),
        }
    }

    // Step 1: buffer; step 2: ask for a snapshot once a diff is buffered.
    fn buffer_delta(&mut self, d: &BookDelta) -> Step {
        if self
            .buffer
            .back()
            .is_some_and(|b| d.final_update_id <= b.final_update_id)
        {
            // A duplicate or replayed diff: already buffered.
            return Step {
                ignored: true,
                ..Step::default()
            };
        }
        if self.buffer.len() == MAX_BUFFERED {
            // Only copies of already-published diffs are lost: the next snapshot is newer.
            self.buffer.pop_front();
        }
        self.buffer.push_back(d.clone());
        if let Some(s) = self.held.take() {
            return self.try_snapshot(&s);
        }
        let mut step = Step::default();
        if !self.awaiting_snapshot {
            self.awaiting_snapshot = true;
            step.request_snapshot = true;
        }
        step
    }

    fn try_snapshot(&mut self, s: &BookSnapshot) -> Step {
        let last = s.last_update_id;
        // Step 4: drop buffered diffs the snapshot already contains.
        let mut reached = false;
        while let Some(d) = self.buffer.front() {
            if d.final_update_id > last {
                break;
            }
            reached |= d.final_update_id == last;
            self.buffer.pop_front();
        }
        let Some(first) = self.buffer.front() else {
            if reached {
                // The stream reached exactly the snapshot's id: the snapshot is the book now,
                // and the next diff must start at lastUpdateId + 1 (step 6).
                self.book.reset(&s.bids, &s.asks, last);
                if self.book.is_crossed() {
                    return self.lose_sync(SyncError::Crossed { update_id: last });
                }
                self.status = SyncStatus::Live;
                return Step {
                    changed: true,
                    status_changed: true,
                    ..Step::default()
                };
            }
            // Every buffered diff is older than the snapshot: wait for the next diff.
            self.held = Some(s.clone());
            return Step::default();
        };
        // Steps 3 and 5: the first diff to apply must satisfy U <= lastUpdateId + 1 <= u.
        if first.first_update_id > last + 1 {
            let first = first.first_update_id;
            crate::debug!(
                "snapshot {last} older than buffered diffs (U={first}); fetching another"
            );
            self.awaiting_snapshot = true;
            return Step {
                request_snapshot: true,
                lost: Some(SyncError::SnapshotTooOld {
                    last_update_id: last,
                    first,
                }),
                ..Step::default()
            };
        }
        self.book.reset(&s.bids, &s.asks, last);
        let buffered: Vec<BookDelta> = self.buffer.drain(..).collect();
        let mut prev = last;
        for (i, d) in buffered.iter().enumerate() {
            // Step 6 across the buffered diffs (step 5 for the first one).
            if i > 0 && d.first_update_id != prev + 1 {
                let e = SyncError::Gap {
                    expected: prev + 1,
                    got: d.first_update_id,
                };
                let mut step = self.lose_sync(e);
                for rest in &buffered[i..] {
                    step.request_snapshot |= self.buffer_delta(rest).request_snapshot;
                }
                return step;
            }
            self.apply(d);
            prev = d.final_update_id;
        }
        if self.book.is_crossed() {
            let mut step = self.lose_sync(SyncError::Crossed { update_id: prev });
            self.awaiting_snapshot = false;
            step.request_snapshot = false;
            return step;
        }
        self.status = SyncStatus::Live;
        Step {
            changed: true,
            status_changed: true,
            ..Step::default()
        }
    }

    fn apply(&mut self, d: &BookDelta) {
        self.book.apply(Side::Bid, &d.bids);
        self.book.apply(Side::Ask, &d.asks);
        self.book.last_update_id = d.final_update_id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Decimal;

    fn lv(p: i64, q: i64) -> (Decimal, Decimal) {
        (Decimal::from_int(p), Decimal::from_int(q))
    }

    fn diff(first: u64, last: u64, bid: (i64, i64)) -> BookDelta {
        BookDelta {
            first_update_id: first,
            final_update_id: last,
            bids: vec![lv(bid.0, bid.1)],
            asks: vec![],
        }
    }

    fn snap(last: u64) -> BookSnapshot {
        BookSnapshot {
            last_update_id: last,
            bids: vec![lv(100, 1), lv(99, 1)],
            asks: vec![lv(101, 1)],
        }
    }

    #[test]
    fn step1_first_diff_is_buffered_and_requests_a_snapshot() {
        let mut s = BookSync::new();
        let st = s.on_delta(&diff(10, 12, (98, 1)));
        assert!(st.request_snapshot);
        assert_eq!(s.status, SyncStatus::Syncing);
        // No second request while one is outstanding.
        assert!(!s.on_delta(&diff(13, 13, (98, 2))).request_snapshot);
    }

    #[test]
    fn step3_snapshot_older_than_buffer_is_refetched() {
        let mut s = BookSync::new();
        s.on_delta(&diff(10, 12, (98, 1)));
        let st = s.on_snapshot(&snap(5));
        assert!(st.request_snapshot);
        assert!(matches!(st.lost, Some(SyncError::SnapshotTooOld { .. })));
        assert_eq!(s.status, SyncStatus::Syncing);
    }

    #[test]
    fn step4_and_step5_drop_old_diffs_and_apply_the_straddling_one() {
        let mut s = BookSync::new();
        s.on_delta(&diff(8, 9, (97, 5)));
        s.on_delta(&diff(10, 12, (98, 1)));
        s.on_delta(&diff(13, 14, (99, 0)));
        let st = s.on_snapshot(&snap(11));
        assert!(st.status_changed);
        assert_eq!(s.status, SyncStatus::Live);
        assert_eq!(s.book.last_update_id, 14);
        // 97 came from a diff the snapshot already contained: dropped, not applied.
        assert_eq!(s.book.bid_levels(), vec![lv(100, 1), lv(98, 1)]);
    }

    #[test]
    fn step6_gap_resyncs_only_this_book() {
        let mut s = BookSync::new();
        s.on_delta(&diff(10, 12, (98, 1)));
        s.on_snapshot(&snap(11));
        assert_eq!(s.status, SyncStatus::Live);
        assert!(s.on_delta(&diff(13, 15, (97, 1))).changed);
        let st = s.on_delta(&diff(17, 18, (96, 1)));
        assert_eq!(
            st.lost,
            Some(SyncError::Gap {
                expected: 16,
                got: 17
            })
        );
        assert!(st.status_changed && st.request_snapshot);
        assert_eq!(s.status, SyncStatus::Syncing);
        assert_eq!(s.book.depth(), (0, 0));
        // The diff that revealed the gap is kept for the next snapshot.
        s.on_snapshot(&snap(17));
        assert_eq!(s.status, SyncStatus::Live);
        assert_eq!(s.book.last_update_id, 18);
    }

    #[test]
    fn step6_old_and_duplicate_diffs_are_ignored() {
        let mut s = BookSync::new();
        s.on_delta(&diff(10, 12, (98, 1)));
        s.on_snapshot(&snap(11));
        assert!(s.on_delta(&diff(10, 12, (50, 1))).ignored);
        assert_eq!(s.status, SyncStatus::Live);
        assert!(!s.book.bid_levels().contains(&lv(50, 1)));
    }

    #[test]
    fn snapshot_before_any_diff_is_held_until_a_diff_proves_it() {
        let mut s = BookSync::new();
        assert_eq!(s.on_snapshot(&snap(20)), Step::default());
        assert_eq!(s.status, SyncStatus::Syncing);
        // A diff older than the snapshot proves nothing yet.
        s.on_delta(&diff(17, 18, (98, 1)));
        assert_eq!(s.status, SyncStatus::Syncing);
        // The stream reaches the snapshot's id exactly: the snapshot is the book now.
        s.on_delta(&diff(19, 20, (98, 1)));
        assert_eq!(s.status, SyncStatus::Live);
        assert_eq!(s.book.last_update_id, 20);
        s.on_delta(&diff(21, 22, (98, 3)));
        assert!(s.book.bid_levels().contains(&lv(98, 3)));
    }

    #[test]
    fn snapshot_predating_the_stream_is_never_used() {
        let mut s = BookSync::new();
        s.on_snapshot(&snap(5));
        let st = s.on_delta(&diff(30, 31, (98, 1)));
        assert!(st.request_snapshot);
        assert_eq!(s.status, SyncStatus::Syncing);
    }

    #[test]
    fn crossed_book_is_never_live() {
        let mut s = BookSync::new();
        s.on_delta(&diff(10, 12, (98, 1)));
        s.on_snapshot(&snap(11));
        let st = s.on_delta(&diff(13, 13, (105, 1)));
        assert!(matches!(st.lost, Some(SyncError::Crossed { .. })));
        assert_eq!(s.status, SyncStatus::Syncing);
    }

    #[test]
    fn stale_then_live_again() {
        let mut s = BookSync::new();
        s.on_delta(&diff(10, 12, (98, 1)));
        s.on_snapshot(&snap(11));
        assert!(s.mark_stale().status_changed);
        assert_eq!(s.status, SyncStatus::Stale);
        let st = s.on_delta(&diff(13, 13, (97, 1)));
        assert!(st.status_changed);
        assert_eq!(s.status, SyncStatus::Live);
    }
}
