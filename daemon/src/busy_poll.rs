//! Bounded busy polling: keep a runtime worker awake for a short window after activity, so the
//! answer a call is waiting for (or the caller's next call) is picked up without the worker
//! going to sleep in `epoll_wait` and having to be woken.
//!
//! Why: on a virtual machine whose idle vCPUs halt at once (the `haltpoll` cpuidle driver with
//! `guest_halt_poll_ns = 0`, or no guest halt polling at all), every wake of a sleeping thread is
//! a VM exit and costs tens of microseconds. A forwarding hop such as virtproxyd's waits twice per
//! call (for the backend's answer, then for the client's next call), so those wakes, not its own
//! work, dominate a lone client's latency. Polling for a bounded window after each call does
//! from user space what the guest's halt polling would do, and costs CPU only while calls come.
//!
//! How: one task per [`BusyPoll`] yields with [`tokio::task::yield_now`] until the window after
//! the last [`BusyPoll::touch`] has passed. A yielded task is run again only after the worker has
//! polled its I/O driver with a zero timeout, so while the task yields the worker checks its
//! sockets continuously instead of sleeping. Each round also yields the thread to the kernel
//! (`sched_yield`), so a polling daemon does not keep another process, such as the client
//! waiting for its answer, off its CPU. When the window is over the task waits on a [`Notify`]
//! and the worker sleeps as usual. A window of zero turns it all off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Keeps a worker polling for a window after each [`touch`](BusyPoll::touch).
#[derive(Debug)]
pub struct BusyPoll {
    /// The window in nanoseconds (0: off).
    window: AtomicU64,
    /// When the current window ends, in nanoseconds since `origin`.
    deadline: AtomicU64,
    origin: Instant,
    /// Whether the polling task is polling now (rather than waiting on `wake`).
    polling: AtomicBool,
    /// Whether the polling task has been spawned.
    spawned: AtomicBool,
    wake: Notify,
}

impl BusyPoll {
    /// A busy poller with window `window` (zero: never polls). Its task is spawned on the
    /// current tokio runtime by the first [`touch`](BusyPoll::touch) that needs it.
    pub fn new(window: Duration) -> Arc<BusyPoll> {
        Arc::new(BusyPoll {
            window: AtomicU64::new(nanos(window)),
            deadline: AtomicU64::new(0),
            origin: Instant::now(),
            polling: AtomicBool::new(false),
            spawned: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    /// Changes the window (a configuration reload); zero stops polling after the current window.
    pub fn set_window(&self, window: Duration) {
        self.window.store(nanos(window), Ordering::Relaxed);
    }

    /// Something happened (a call came in, an answer came back): keep polling until the window
    /// after now has passed. Must be called from within a tokio runtime when the window is not
    /// zero.
    pub fn touch(self: &Arc<Self>) {
        let window = self.window.load(Ordering::Relaxed);
        if window == 0 {
            return;
        }
        let until = self.now().saturating_add(window);
        self.deadline.fetch_max(until, Ordering::Relaxed);
        if self.polling.load(Ordering::Acquire) {
            return;
        }
        if !self.spawned.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(Arc::clone(self).run());
                }
                Err(_) => {
                    self.spawned.store(false, Ordering::Release);
                    return;
                }
            }
        }
        // Stores a permit if the task is not waiting yet, so no touch is lost.
        self.wake.notify_one();
    }

    fn now(&self) -> u64 {
        nanos(self.origin.elapsed())
    }

    /// The polling task: polls while a window is open, otherwise waits for a touch. It ends only
    /// with its runtime.
    async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            self.polling.store(true, Ordering::Release);
            loop {
                while self.now() < self.deadline.load(Ordering::Relaxed) {
                    // Let any other thread waiting for this CPU run first (`sched_yield`): the
                    // client or the backend of a call may be it, and the CPU stays awake.
                    std::thread::yield_now();
                    tokio::task::yield_now().await;
                }
                self.polling.store(false, Ordering::Release);
                // A touch that saw `polling` still set may have moved the deadline after the
                // last check: look once more before sleeping.
                if self.now() >= self.deadline.load(Ordering::Relaxed) {
                    break;
                }
                self.polling.store(true, Ordering::Release);
            }
        }
    }

    /// Whether the polling task is polling now.
    pub fn is_polling(&self) -> bool {
        self.polling.load(Ordering::Acquire)
    }
}

/// The tower layer that [touches](BusyPoll::touch) a [`BusyPoll`] when each call comes in and
/// again when its answer is ready, so the worker keeps polling for the caller's next call.
#[derive(Debug, Clone)]
pub struct BusyPollLayer {
    poll: Arc<BusyPoll>,
}

impl BusyPollLayer {
    /// A layer touching `poll`.
    pub fn new(poll: Arc<BusyPoll>) -> BusyPollLayer {
        BusyPollLayer { poll }
    }
}

impl<S> tower::Layer<S> for BusyPollLayer {
    type Service = BusyPollService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BusyPollService {
            inner,
            poll: Arc::clone(&self.poll),
        }
    }
}

/// The service [`BusyPollLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct BusyPollService<S> {
    inner: S,
    poll: Arc<BusyPoll>,
}

impl<S, Req> tower::Service<Req> for BusyPollService<S>
where
    S: tower::Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Touched<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.poll.touch();
        Touched {
            inner: self.inner.call(request),
            poll: Arc::clone(&self.poll),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's answer, touching its [`BusyPoll`] when it is ready.
    pub struct Touched<F> {
        #[pin]
        inner: F,
        poll: Arc<BusyPoll>,
    }
}

impl<F: std::future::Future> std::future::Future for Touched<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        let ready = this.inner.poll(cx);
        if ready.is_ready() {
            this.poll.touch();
        }
        ready
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (without sleeping the thread) until `cond` holds or `limit` passes.
    async fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        cond()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_touch_polls_for_the_window_and_then_stops() {
        let poll = BusyPoll::new(Duration::from_millis(50));
        assert!(!poll.is_polling());
        poll.touch();
        assert!(until(Duration::from_secs(5), || poll.is_polling()).await);
        assert!(until(Duration::from_secs(5), || !poll.is_polling()).await);
        // And again: the task waits for the next touch rather than ending.
        poll.touch();
        assert!(until(Duration::from_secs(5), || poll.is_polling()).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_zero_window_never_polls() {
        let poll = BusyPoll::new(Duration::ZERO);
        poll.touch();
        tokio::task::yield_now().await;
        assert!(!poll.is_polling());
        assert!(!poll.spawned.load(Ordering::Acquire));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn while_polling_the_worker_still_serves_io() {
        // A socket pair: the answer must get through while the poller keeps the worker busy.
        let poll = BusyPoll::new(Duration::from_secs(2));
        poll.touch();
        let (a, mut b) = tokio::net::UnixStream::pair().expect("socketpair");
        let echo = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 4];
            b.read_exact(&mut buf).await.expect("read");
            b.write_all(&buf).await.expect("write");
        });
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut a = a;
        a.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), a.read_exact(&mut buf))
            .await
            .expect("answered while polling")
            .expect("read");
        assert_eq!(&buf, b"ping");
        assert!(poll.is_polling());
        echo.await.expect("echo task");
    }

    #[test]
    fn outside_a_runtime_a_touch_does_nothing() {
        let poll = BusyPoll::new(Duration::from_millis(1));
        poll.touch();
        assert!(!poll.spawned.load(Ordering::Acquire));
    }
}
