//! Sequenced, resumable event streams, shared by every daemon's `Watch*Events` RPC.
//!
//! The conventions are in `proto/rvirt/v1/common.proto` ("Event streams"): every event gets the
//! next `sequence` in the daemon's `epoch`; a watch can resume after a sequence it has seen and
//! first gets the retained events it missed, then `CaughtUp`, then live events; when that cannot
//! be done (too old, another epoch, a future sequence, a consumer too slow) it gets
//! `ResyncRequired` instead and must re-read state.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::{Stream, StreamExt as _};

/// One emitted event with its place in the sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequenced<E> {
    /// Its sequence number, from 1, increasing by one per event.
    pub sequence: u64,
    /// When the daemon observed it.
    pub time: SystemTime,
    /// The event.
    pub event: E,
}

/// Why a watch could not be resumed where it asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// The sequence is older than the oldest retained event.
    TooOld,
    /// The epoch is not the current one.
    EpochChanged,
    /// The consumer fell behind and events for it were dropped.
    SlowConsumer,
    /// The sequence is newer than anything emitted.
    FutureSequence,
}

/// What a watch stream delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery<E> {
    /// An event.
    Event(Arc<Sequenced<E>>),
    /// The replay is complete; live events follow.
    CaughtUp {
        /// The current epoch.
        epoch: String,
        /// The last sequence emitted so far.
        current_sequence: u64,
    },
    /// Events the watch asked for cannot be delivered; the client must re-read state.
    ResyncRequired {
        /// Why.
        reason: Resync,
        /// The current epoch.
        epoch: String,
        /// The sequence the client asked to resume after.
        requested_sequence: u64,
        /// The oldest retained sequence, 0 when none is retained.
        oldest_retained_sequence: u64,
        /// The last sequence emitted so far.
        current_sequence: u64,
    },
}

impl From<Resync> for rvirt_proto::v1::ResyncReason {
    fn from(reason: Resync) -> Self {
        match reason {
            Resync::TooOld => Self::TooOld,
            Resync::EpochChanged => Self::EpochChanged,
            Resync::SlowConsumer => Self::SlowConsumer,
            Resync::FutureSequence => Self::FutureSequence,
        }
    }
}

#[derive(Debug)]
struct Inner<E> {
    next: u64,
    retained: VecDeque<Arc<Sequenced<E>>>,
}

/// How many events a live watch may fall behind before it must resume from the retained log
/// (it gets a resync with reason `SlowConsumer`). The channel allocates all its slots at once,
/// so a log retaining more events does not make it larger.
const LIVE_CAPACITY: usize = 1024;

/// A daemon's log of one kind of event: emits, retains the last `capacity`, and serves watches.
#[derive(Debug)]
pub struct EventLog<E> {
    epoch: String,
    capacity: usize,
    inner: Mutex<Inner<E>>,
    live: broadcast::Sender<Arc<Sequenced<E>>>,
    closed: tokio::sync::watch::Sender<bool>,
}

impl<E: Clone + Send + Sync + 'static> EventLog<E> {
    /// A log in a new epoch that retains the last `capacity` events for resuming watches.
    pub fn new(capacity: usize) -> Self {
        Self::with_epoch(uuid_like(), capacity)
    }

    /// A log in the given epoch (a daemon that persists its numbering keeps its epoch).
    pub fn with_epoch(epoch: String, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        EventLog {
            epoch,
            capacity,
            inner: Mutex::new(Inner {
                next: 1,
                // Grows with the events: an idle daemon keeps no room for thousands.
                retained: VecDeque::new(),
            }),
            live: broadcast::channel(capacity.clamp(16, LIVE_CAPACITY)).0,
            closed: tokio::sync::watch::channel(false).0,
        }
    }

    /// Ends every watch (the daemon is shutting down, so in-flight calls can drain); watches
    /// opened later end at once.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The epoch of this log's numbering.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<E>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Emits an event; returns its sequence number.
    pub fn emit(&self, event: E) -> u64 {
        let mut inner = self.lock();
        let sequenced = Arc::new(Sequenced {
            sequence: inner.next,
            time: SystemTime::now(),
            event,
        });
        inner.next += 1;
        if inner.retained.len() == self.capacity {
            inner.retained.pop_front();
        }
        inner.retained.push_back(Arc::clone(&sequenced));
        // Sent under the lock, so a watch that subscribes under the lock sees each event once.
        let _ = self.live.send(Arc::clone(&sequenced));
        sequenced.sequence
    }

    /// The last sequence emitted, 0 before the first event.
    pub fn current_sequence(&self) -> u64 {
        self.lock().next - 1
    }

    /// A watch that resumes after `since_sequence` in `since_epoch` (empty: the current epoch),
    /// or starts with live events when `since_sequence` is 0.
    pub fn watch(
        &self,
        since_epoch: &str,
        since_sequence: u64,
    ) -> impl Stream<Item = Delivery<E>> + Send + 'static {
        let inner = self.lock();
        let live = BroadcastStream::new(self.live.subscribe());
        let current = inner.next - 1;
        let oldest = inner.retained.front().map_or(0, |e| e.sequence);
        let epoch = self.epoch.clone();
        let resync = |reason| Delivery::ResyncRequired {
            reason,
            epoch: epoch.clone(),
            requested_sequence: since_sequence,
            oldest_retained_sequence: oldest,
            current_sequence: current,
        };
        let mut head: Vec<Delivery<E>> = Vec::new();
        if since_sequence > 0 {
            if !since_epoch.is_empty() && since_epoch != self.epoch {
                head.push(resync(Resync::EpochChanged));
            } else if since_sequence > current {
                head.push(resync(Resync::FutureSequence));
            } else if since_sequence < current && (oldest == 0 || since_sequence + 1 < oldest) {
                head.push(resync(Resync::TooOld));
            } else {
                head.extend(
                    inner
                        .retained
                        .iter()
                        .filter(|e| e.sequence > since_sequence)
                        .cloned()
                        .map(Delivery::Event),
                );
            }
        }
        head.push(Delivery::CaughtUp {
            epoch: epoch.clone(),
            current_sequence: current,
        });
        if *self.closed.borrow() {
            head.clear(); // a watch opened after close ends at once
        }
        drop(inner);
        let live = live.map(move |item| match item {
            Ok(event) => Delivery::Event(event),
            Err(BroadcastStreamRecvError::Lagged(_)) => Delivery::ResyncRequired {
                reason: Resync::SlowConsumer,
                epoch: epoch.clone(),
                requested_sequence: 0,
                oldest_retained_sequence: 0,
                current_sequence: 0,
            },
        });
        // The watch ends when the log is closed: a `None` from the closed flag stops it.
        let closing = tokio_stream::wrappers::WatchStream::new(self.closed.subscribe())
            .filter(|closed| *closed)
            .map(|_| None);
        tokio_stream::iter(head)
            .chain(live)
            .map(Some)
            .merge(closing)
            .take_while(Option::is_some)
            .filter_map(|delivery| delivery)
    }
}

fn uuid_like() -> String {
    // The epoch only needs to differ between daemon runs: time and pid make it so.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}-{:x}", now.as_nanos(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn take<E: Clone + Send + Sync + 'static>(
        stream: &mut (impl Stream<Item = Delivery<E>> + Unpin),
        n: usize,
    ) -> Vec<Delivery<E>> {
        let mut out = Vec::new();
        for _ in 0..n {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await;
            out.push(next.expect("a delivery in time").expect("stream open"));
        }
        out
    }

    fn seqs<E>(items: &[Delivery<E>]) -> Vec<u64> {
        items
            .iter()
            .filter_map(|d| match d {
                Delivery::Event(e) => Some(e.sequence),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn live_watch_starts_with_caught_up_then_events() {
        let log = EventLog::new(8);
        log.emit("before");
        let mut watch = Box::pin(log.watch("", 0));
        log.emit("a");
        log.emit("b");
        let got = take(&mut watch, 3).await;
        assert_eq!(
            got[0],
            Delivery::CaughtUp {
                epoch: log.epoch().to_owned(),
                current_sequence: 1
            }
        );
        assert_eq!(seqs(&got), vec![2, 3]);
    }

    #[tokio::test]
    async fn resume_replays_what_was_missed_exactly_once() {
        let log = EventLog::new(8);
        for i in 0..5 {
            log.emit(i);
        }
        let mut watch = Box::pin(log.watch(log.epoch(), 2));
        log.emit(5);
        let got = take(&mut watch, 5).await;
        assert_eq!(seqs(&got), vec![3, 4, 5, 6]);
        assert!(matches!(
            got[3],
            Delivery::CaughtUp {
                current_sequence: 5,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn too_old_other_epoch_and_future_ask_for_resync() {
        let log = EventLog::new(3);
        for i in 0..10 {
            log.emit(i);
        }
        let reason = |d: &Delivery<i32>| match d {
            Delivery::ResyncRequired { reason, .. } => Some(*reason),
            _ => None,
        };
        let got = take(&mut Box::pin(log.watch("", 2)), 2).await;
        assert_eq!(reason(&got[0]), Some(Resync::TooOld));
        assert!(matches!(got[1], Delivery::CaughtUp { .. }));
        let got = take(&mut Box::pin(log.watch("another-epoch", 9)), 1).await;
        assert_eq!(reason(&got[0]), Some(Resync::EpochChanged));
        let got = take(&mut Box::pin(log.watch("", 11)), 1).await;
        assert_eq!(reason(&got[0]), Some(Resync::FutureSequence));
        // Resuming from the newest sequence, or just before the oldest retained one, is fine.
        let got = take(&mut Box::pin(log.watch("", 10)), 1).await;
        assert!(matches!(
            got[0],
            Delivery::CaughtUp {
                current_sequence: 10,
                ..
            }
        ));
        let got = take(&mut Box::pin(log.watch("", 7)), 4).await;
        assert_eq!(seqs(&got), vec![8, 9, 10]);
    }

    #[tokio::test]
    async fn close_ends_open_and_later_watches() {
        let log: EventLog<u32> = EventLog::new(4);
        let mut open = Box::pin(log.watch("", 0));
        assert!(matches!(take(&mut open, 1).await[0], Delivery::CaughtUp { .. }));
        log.close();
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), open.next()).await;
        assert!(end.expect("ends in time").is_none());
        let mut later = Box::pin(log.watch("", 0));
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), later.next()).await;
        assert!(end.expect("ends in time").is_none());
    }

    #[tokio::test]
    async fn slow_consumer_is_told_to_resync() {
        let log = EventLog::new(1);
        let mut watch = Box::pin(log.watch("", 0));
        for i in 0..100 {
            log.emit(i);
        }
        let got = take(&mut watch, 2).await;
        assert!(
            matches!(
                got[1],
                Delivery::ResyncRequired {
                    reason: Resync::SlowConsumer,
                    ..
                }
            ),
            "{got:?}"
        );
    }
}
