//! Event subscriptions that survive a dropped connection.
//!
//! A watch runs in a background task: it opens the daemon's `Watch*Events` stream, hands every
//! event to the caller, and remembers the last `(epoch, sequence)`. When the connection drops
//! (the daemon restarted, the socket went away) it reconnects with backoff and resumes after
//! that sequence, so nothing is lost or repeated; if the daemon can no longer replay what was
//! missed, the caller gets [`WatchItem::Resync`] and should re-read state. When resuming is
//! impossible (the call is refused, the service does not exist) the stream ends and
//! [`Subscription::closed`] says why.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rvirt_proto::v1::{CaughtUp, ResyncRequired};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt as _};

use crate::error::Error;

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem<E> {
    /// An event.
    Event(E),
    /// Events were lost (too old, the daemon lost its numbering, the reader was too slow): re-read
    /// the state you care about.
    Resync(ResyncRequired),
}

/// One message of a watch stream, in the shape every `Watch*EventsResponse` has.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchMessage<E> {
    /// An event with its epoch and sequence.
    Event {
        /// The sequence space.
        epoch: String,
        /// Its sequence number.
        sequence: u64,
        /// The event.
        event: E,
    },
    /// Events could not be replayed.
    Resync(ResyncRequired),
    /// The replay is over.
    CaughtUp(CaughtUp),
}

/// A stream of a service's raw watch responses.
pub type RawStream<R> = Pin<Box<dyn Stream<Item = Result<R, tonic::Status>> + Send>>;

/// Opens the raw watch stream after `(epoch, sequence)`.
pub type Opener<R> = Box<
    dyn Fn(String, u64) -> Pin<Box<dyn Future<Output = Result<RawStream<R>, tonic::Status>> + Send>>
        + Send
        + Sync,
>;

/// A live subscription: a stream of items, and why it ended when it does.
#[derive(Debug)]
pub struct Subscription<E> {
    items: tokio_stream::wrappers::ReceiverStream<WatchItem<E>>,
    closed: watch::Receiver<Option<Error>>,
}

impl<E> Subscription<E> {
    /// Resolves when the subscription can no longer continue, with the reason.
    pub async fn closed(&self) -> Error {
        let mut closed = self.closed.clone();
        match closed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_else(ended),
            Err(_) => ended(),
        }
    }
}

fn ended() -> Error {
    Error::new(
        rvirt_proto::v1::ErrorCode::OperationAborted,
        rvirt_proto::v1::ErrorDomain::Event,
        "The subscription was dropped",
    )
}

impl<E> Stream for Subscription<E> {
    type Item = WatchItem<E>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        Pin::new(&mut self.items).poll_next(cx)
    }
}

/// Whether a failed watch may be retried (the daemon or the connection is away) or is final.
fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled
    )
}

/// Starts a subscription: `open` opens the raw stream, `split` reads one response. Returns once
/// the daemon confirmed the watch (its first `CaughtUp`), so every change made after this returns
/// is seen; fails if the first attempt is refused for good.
pub async fn subscribe<R, E>(
    open: Opener<R>,
    split: fn(R) -> Option<WatchMessage<E>>,
    since: Option<(String, u64)>,
) -> Result<Subscription<E>, Error>
where
    R: Send + 'static,
    E: Send + 'static,
{
    let (tx, rx) = mpsc::channel(256);
    let (closed_tx, closed) = watch::channel(None);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), Error>>();
    let mut ready_tx = Some(ready_tx);
    tokio::spawn(async move {
        let (mut epoch, mut sequence) = since.unwrap_or_default();
        let mut backoff = Duration::from_millis(50);
        loop {
            let failure = match open(epoch.clone(), sequence).await {
                Ok(mut stream) => {
                    backoff = Duration::from_millis(50);
                    loop {
                        match stream.next().await {
                            Some(Ok(response)) => match split(response) {
                                Some(WatchMessage::Event {
                                    epoch: e,
                                    sequence: s,
                                    event,
                                }) => {
                                    epoch = e;
                                    sequence = s;
                                    if tx.send(WatchItem::Event(event)).await.is_err() {
                                        return; // the caller dropped the subscription
                                    }
                                }
                                Some(WatchMessage::Resync(resync)) => {
                                    if !resync.epoch.is_empty() {
                                        epoch = resync.epoch.clone();
                                    }
                                    sequence = sequence.max(resync.current_sequence);
                                    if tx.send(WatchItem::Resync(resync)).await.is_err() {
                                        return;
                                    }
                                }
                                Some(WatchMessage::CaughtUp(caught_up)) => {
                                    if epoch.is_empty() || sequence == 0 {
                                        epoch = caught_up.epoch;
                                        sequence = caught_up.current_sequence;
                                    }
                                    if let Some(ready) = ready_tx.take() {
                                        let _ = ready.send(Ok(()));
                                    }
                                }
                                None => {}
                            },
                            Some(Err(status)) => break status,
                            None => break tonic::Status::unavailable("the event stream ended"),
                        }
                    }
                }
                Err(status) => status,
            };
            if !retryable(&failure) {
                let error = Error::from(failure);
                if let Some(ready) = ready_tx.take() {
                    let _ = ready.send(Err(error.clone()));
                }
                closed_tx.send_replace(Some(error));
                return;
            }
            // The daemon is away: let the caller go on; the watch resumes when it is back.
            if let Some(ready) = ready_tx.take() {
                let _ = ready.send(Ok(()));
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = tx.closed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
    match ready_rx.await {
        Ok(Err(error)) => Err(error),
        _ => Ok(Subscription {
            items: tokio_stream::wrappers::ReceiverStream::new(rx),
            closed,
        }),
    }
}
