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
//!
//! How long: the configured window (`busy_poll_us`) is a ceiling, not what every touch gets. The
//! window in use adapts the way KVM adapts its halt polling, from how long the worker really
//! slept. The runtime reports each sleep of a worker ([`BusyPoll::install`] hooks its park and
//! unpark). When a touch comes and the worker has slept since the previous one:
//! - for no longer than the ceiling: polling longer would have saved that sleep and its wake, so
//!   the window doubles (from [`GROW_START`], up to the ceiling);
//! - for longer than the ceiling: the window before that sleep was polled for nothing, so the
//!   window drops to a quarter (to zero below `GROW_START`); shrinking faster than it grows keeps
//!   a daemon whose calls alternate short and long waits from settling on a long window.
//!
//! A touch after no sleep leaves the window as it is. So a daemon that gets calls back to back
//! polls as long as it takes to stop sleeping between them (up to the ceiling), one that gets a
//! call now and then polls at most a few microseconds after each, and an idle daemon not at all.
//! With several workers the latest sleep of any of them is what counts.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The window a worker that was not polling starts with once polling would have paid: 10 µs.
pub const GROW_START: Duration = Duration::from_micros(10);

thread_local! {
    /// When this worker thread last went to sleep (its runtime's park hook).
    static PARKED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Keeps a worker polling for a window after each [`touch`](BusyPoll::touch).
#[derive(Debug)]
pub struct BusyPoll {
    /// The configured window, the ceiling of `window`, in nanoseconds (0: off).
    ceiling: AtomicU64,
    /// The window in use now, in nanoseconds ([`adapt`]).
    window: AtomicU64,
    /// How many times a worker woke from a sleep (the unpark hook).
    wakes: AtomicU64,
    /// How long the latest of those sleeps lasted, in nanoseconds.
    slept: AtomicU64,
    /// `wakes` as the previous touch saw it.
    seen_wakes: AtomicU64,
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
    /// A busy poller whose window adapts up to `ceiling` (zero: never polls). Its task is
    /// spawned on the current tokio runtime by the first [`touch`](BusyPoll::touch) that needs
    /// it; the window grows only on a runtime it is [installed](BusyPoll::install) in.
    pub fn new(ceiling: Duration) -> Arc<BusyPoll> {
        Arc::new(BusyPoll {
            ceiling: AtomicU64::new(nanos(ceiling)),
            window: AtomicU64::new(0),
            wakes: AtomicU64::new(0),
            slept: AtomicU64::new(0),
            seen_wakes: AtomicU64::new(0),
            deadline: AtomicU64::new(0),
            origin: Instant::now(),
            polling: AtomicBool::new(false),
            spawned: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    /// Hooks the runtime `builder` will build so that its workers report their sleeps here.
    pub fn install(self: &Arc<Self>, builder: &mut tokio::runtime::Builder) {
        let poll = Arc::clone(self);
        builder
            .on_thread_park(|| PARKED_AT.set(Some(Instant::now())))
            .on_thread_unpark(move || {
                if let Some(at) = PARKED_AT.take() {
                    poll.woke(at.elapsed());
                }
            });
    }

    /// A worker woke after sleeping for `slept`.
    fn woke(&self, slept: Duration) {
        self.slept.store(nanos(slept), Ordering::Relaxed);
        self.wakes.fetch_add(1, Ordering::Release);
    }

    /// Changes the ceiling (a configuration reload); zero stops polling after the current window.
    pub fn set_ceiling(&self, ceiling: Duration) {
        let ceiling = nanos(ceiling);
        self.ceiling.store(ceiling, Ordering::Relaxed);
        self.window.fetch_min(ceiling, Ordering::Relaxed);
    }

    /// The window in use now (it adapts between zero and the ceiling).
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window.load(Ordering::Relaxed))
    }

    /// Something happened (a call came in, an answer came back): adapt the window, and keep
    /// polling until it has passed after now. Must be called from within a tokio runtime when
    /// the ceiling is not zero.
    pub fn touch(self: &Arc<Self>) {
        let ceiling = self.ceiling.load(Ordering::Relaxed);
        if ceiling == 0 {
            return;
        }
        let wakes = self.wakes.load(Ordering::Acquire);
        let slept = (self.seen_wakes.swap(wakes, Ordering::Relaxed) != wakes)
            .then(|| self.slept.load(Ordering::Relaxed));
        // Concurrent touches (several workers) may each adapt from the same value: one step is
        // lost, which the next touches make up.
        let window = adapt(self.window.load(Ordering::Relaxed), slept, ceiling);
        self.window.store(window, Ordering::Relaxed);
        if window == 0 {
            return;
        }
        self.deadline
            .fetch_max(self.now().saturating_add(window), Ordering::Relaxed);
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

/// The next window, in nanoseconds, with `window` in use and `ceiling` configured, for a touch
/// after the worker slept for `slept` ns since the previous one (`None`: it did not sleep).
fn adapt(window: u64, slept: Option<u64>, ceiling: u64) -> u64 {
    let start = nanos(GROW_START);
    match slept {
        None => window,
        // Polling up to the ceiling would have saved this sleep: grow.
        Some(slept) if slept <= ceiling => window.saturating_mul(2).max(start).min(ceiling),
        // The worker slept longer than any window: the last one was polled for nothing.
        Some(_) => {
            let quarter = window / 4;
            if quarter < start { 0 } else { quarter }
        }
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

    /// Puts the window at the ceiling, as touches after short sleeps would (see
    /// `short_sleeps_grow_the_window_until_the_worker_stops_sleeping`).
    fn grow_to_ceiling(poll: &Arc<BusyPoll>, ceiling: Duration) {
        poll.window.store(nanos(ceiling), Ordering::Relaxed);
    }

    const US: u64 = 1000;

    #[test]
    fn a_sleep_within_the_ceiling_doubles_the_window_from_the_start_up_to_the_ceiling() {
        let ceiling = 300 * US;
        let start = nanos(GROW_START);
        assert_eq!(adapt(0, Some(40 * US), ceiling), start);
        assert_eq!(adapt(start, Some(40 * US), ceiling), 2 * start);
        assert_eq!(adapt(160 * US, Some(200 * US), ceiling), ceiling);
        assert_eq!(adapt(ceiling, Some(ceiling), ceiling), ceiling);
        // A ceiling below the start is a window of its own.
        assert_eq!(adapt(0, Some(3 * US), 5 * US), 5 * US);
    }

    #[test]
    fn a_longer_sleep_quarters_the_window_and_stops_it_below_the_start() {
        let ceiling = 300 * US;
        let start = nanos(GROW_START);
        let second = 1_000_000_000;
        assert_eq!(adapt(ceiling, Some(second), ceiling), ceiling / 4);
        assert_eq!(adapt(4 * start, Some(ceiling + 1), ceiling), start);
        assert_eq!(adapt(2 * start, Some(second), ceiling), 0);
        assert_eq!(adapt(0, Some(second), ceiling), 0);
    }

    #[test]
    fn no_sleep_since_the_last_touch_keeps_the_window() {
        let ceiling = 300 * US;
        for window in [0, nanos(GROW_START), 80 * US, ceiling] {
            assert_eq!(adapt(window, None, ceiling), window);
        }
    }

    #[test]
    fn short_sleeps_grow_the_window_until_the_worker_stops_sleeping() {
        // Outside a runtime no task polls; the sleeps are the test's.
        let poll = BusyPoll::new(Duration::from_micros(300));
        let mut windows = Vec::new();
        // The worker sleeps 35 µs before each touch while its window is shorter than that.
        for _ in 0..8 {
            if poll.window() < Duration::from_micros(35) {
                poll.woke(Duration::from_micros(35 - poll.window().as_micros() as u64));
            }
            poll.touch();
            windows.push(poll.window().as_micros());
        }
        assert_eq!(windows, [10, 20, 40, 40, 40, 40, 40, 40]);
        // Then a pause longer than the ceiling: that window was polled for nothing.
        poll.woke(Duration::from_millis(2));
        poll.touch();
        assert_eq!(poll.window(), Duration::from_micros(10));
        // Two touches after one sleep: only the first adapts.
        poll.woke(Duration::from_micros(50));
        poll.touch();
        poll.touch();
        assert_eq!(poll.window(), Duration::from_micros(20));
    }

    #[test]
    fn one_call_now_and_then_polls_a_few_microseconds_at_most() {
        // Every 2 ms a call comes (the worker slept until then) and is answered after a 200 µs
        // wait (an fsync on a blocking thread, the worker asleep meanwhile).
        let poll = BusyPoll::new(Duration::from_micros(300));
        grow_to_ceiling(&poll, Duration::from_micros(300));
        let mut after_answer = Vec::new();
        for _ in 0..6 {
            poll.woke(Duration::from_millis(2));
            poll.touch();
            poll.woke(Duration::from_micros(200));
            poll.touch();
            after_answer.push(poll.window().as_micros());
        }
        assert_eq!(after_answer, [150, 75, 37, 10, 10, 10]);
    }

    #[test]
    fn an_installed_runtime_reports_its_workers_sleeps() {
        // A ceiling longer than any sleep here: every sleep counts as short, so the window grows.
        let poll = BusyPoll::new(Duration::from_secs(10));
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(1).enable_all();
        poll.install(&mut builder);
        let runtime = builder.build().expect("runtime");
        let slept = Arc::clone(&poll);
        let window = runtime.block_on(async move {
            // The worker has nothing to do while this task waits on the timer: it sleeps.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                slept.touch();
                slept.window()
            })
            .await
            .expect("task")
        });
        assert!(poll.wakes.load(Ordering::Acquire) > 0);
        assert_eq!(window, GROW_START);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_touch_polls_for_the_window_and_then_stops() {
        let ceiling = Duration::from_millis(50);
        let poll = BusyPoll::new(ceiling);
        assert!(!poll.is_polling());
        assert_eq!(poll.window(), Duration::ZERO);
        grow_to_ceiling(&poll, ceiling);
        poll.touch();
        assert!(until(Duration::from_secs(5), || poll.is_polling()).await);
        assert!(until(Duration::from_secs(5), || !poll.is_polling()).await);
        // And again: the task waits for the next touch rather than ending. (This runtime does
        // not report its sleeps, so the window stays.)
        poll.touch();
        assert_eq!(poll.window(), ceiling);
        assert!(until(Duration::from_secs(5), || poll.is_polling()).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_lower_ceiling_caps_the_window_at_once() {
        let poll = BusyPoll::new(Duration::from_millis(50));
        grow_to_ceiling(&poll, Duration::from_millis(50));
        poll.set_ceiling(Duration::from_micros(100));
        assert_eq!(poll.window(), Duration::from_micros(100));
        poll.set_ceiling(Duration::ZERO);
        poll.touch();
        assert_eq!(poll.window(), Duration::ZERO);
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
        grow_to_ceiling(&poll, Duration::from_secs(2));
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
    fn outside_a_runtime_a_touch_spawns_nothing() {
        let poll = BusyPoll::new(Duration::from_millis(1));
        poll.touch();
        assert!(!poll.spawned.load(Ordering::Acquire));
    }
}
