//! `proxy-bench`: the no-op round trip (`HostService.GetType`) direct to virtsecretd and through
//! virtproxyd, p50/p99 and calls/s with 1 and 8 concurrent clients, and the CPU each daemon
//! spends per call, also for one client calling every 2 ms (the paced rows: what busy polling
//! costs when calls do not come back to back).
//!
//! It starts the real `virtsecretd` and `virtproxyd` binaries (from the directory this binary is
//! in, or `RVIRT_BIN_DIR`) in a temporary `RVIRT_ROOT`, waits for their readiness notification,
//! and prints a table. `--proxy-poll-us N` and `--backend-poll-us N` write `busy_poll_us = N`
//! into virtproxyd's and virtsecretd's configuration files (otherwise each runs with the
//! default).
//!
//! Two measures of the machine itself come with the table, since they bound what any daemon
//! can reach on it: a `socket` row, the same round trip with no gRPC at all (16 bytes each way
//! between two threads over a Unix socket pair, each blocking in `read`, so every call wakes the
//! other side as an unpolled gRPC call does), and a line saying how often a busy CPU is
//! interrupted (timer ticks, the hypervisor taking the vCPU away) and for how long.
//!
//! Build everything in release mode first:
//!
//! ```text
//! cargo build --release -p virtsecretd -p virtproxyd && target/release/proxy-bench [--calls N] [--proxy-poll-us N] [--backend-poll-us N]
//! ```

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rvirt_proto::v1::GetTypeRequest;
use rvirt_proto::v1::host_service_client::HostServiceClient;
use tonic::transport::Channel;

const WARMUP: usize = 500;

/// The paced rows: this many calls, one every `PACE`, after `PACED_WARMUP` back-to-back ones.
const PACED_CALLS: usize = 1000;
const PACE: Duration = Duration::from_millis(2);
const PACED_WARMUP: usize = 10;

/// The calls a client makes before it starts measuring.
fn warmup(pace: Option<Duration>) -> usize {
    if pace.is_some() { PACED_WARMUP } else { WARMUP }
}

/// One measured configuration.
struct Row {
    path: &'static str,
    clients: usize,
    p50: Duration,
    p99: Duration,
    rate: f64,
    /// CPU time per call of the daemon, of the proxy (when the row goes through it) and of the
    /// client (this process).
    cpu: [Option<Duration>; 3],
}

/// The CPU time (user + system) process `pid` has used, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after_name` starts at field 3.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)?;
    Some(Duration::from_micros(ticks * 1_000_000 / per_second))
}

async fn one_client(
    channel: Channel,
    uri: Option<&'static str>,
    calls: usize,
    pace: Option<Duration>,
) -> Result<Vec<Duration>, String> {
    let mut client = HostServiceClient::new(channel);
    let request = || {
        let mut request = tonic::Request::new(GetTypeRequest {});
        if let Some(uri) = uri {
            request.metadata_mut().insert(
                rvirt_proto::URI_METADATA_KEY,
                tonic::metadata::MetadataValue::from_static(uri),
            );
        }
        request
    };
    for _ in 0..warmup(pace) {
        client
            .get_type(request())
            .await
            .map_err(|e| format!("warm-up call failed: {}", e.message()))?;
    }
    let mut latencies = Vec::with_capacity(calls);
    let mut ticks = pace.map(|pace| {
        let mut ticks = tokio::time::interval(pace);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    for _ in 0..calls {
        if let Some(ticks) = &mut ticks {
            ticks.tick().await;
        }
        let start = Instant::now();
        client
            .get_type(request())
            .await
            .map_err(|e| format!("call failed: {}", e.message()))?;
        latencies.push(start.elapsed());
    }
    Ok(latencies)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    path: &'static str,
    socket: &Path,
    uri: Option<&'static str>,
    clients: usize,
    calls: usize,
    pace: Option<Duration>,
    daemons: [Option<u32>; 2],
) -> Result<Row, String> {
    let pids = [daemons[0], daemons[1], Some(std::process::id())];
    let mut channels = Vec::with_capacity(clients);
    for _ in 0..clients {
        channels.push(
            rvirt::transport::unix_channel(socket)
                .await
                .map_err(|e| format!("{e}"))?,
        );
    }
    let per_client = calls.div_ceil(clients);
    let cpu_before = pids.map(|pid| pid.and_then(cpu_time));
    let started = Instant::now();
    let tasks: Vec<_> = channels
        .into_iter()
        .map(|channel| tokio::spawn(one_client(channel, uri, per_client, pace)))
        .collect();
    let mut latencies = Vec::with_capacity(per_client * clients);
    for task in tasks {
        latencies.extend(task.await.map_err(|e| format!("client task: {e}"))??);
    }
    // The warm-up is part of the elapsed time; count it in the rate too.
    let elapsed = started.elapsed();
    let total = (per_client + warmup(pace)) * clients;
    let mut cpu = [None; 3];
    for (i, pid) in pids.iter().enumerate() {
        if let (Some(before), Some(after)) = (cpu_before[i], pid.and_then(cpu_time)) {
            cpu[i] = Some(after.saturating_sub(before) / u32::try_from(total).unwrap_or(u32::MAX));
        }
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Row {
        path,
        clients,
        p50: at(0.50),
        p99: at(0.99),
        rate: total as f64 / elapsed.as_secs_f64(),
        cpu,
    })
}

/// The `socket` row: `calls` round trips of 16 bytes between this thread and an echo thread over
/// a Unix socket pair, both blocking in `read`.
fn socket_floor(calls: usize) -> Result<Row, String> {
    use std::io::{Read, Write};
    let (mut near, mut far) =
        std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        while far.read_exact(&mut buf).is_ok() {
            if far.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 16];
    let mut round_trip = |buf: &mut [u8; 16]| -> Result<(), String> {
        near.write_all(buf).map_err(|e| format!("socket floor: {e}"))?;
        near.read_exact(buf).map_err(|e| format!("socket floor: {e}"))
    };
    for _ in 0..WARMUP {
        round_trip(&mut buf)?;
    }
    let mut latencies = Vec::with_capacity(calls);
    let started = Instant::now();
    for _ in 0..calls {
        let start = Instant::now();
        round_trip(&mut buf)?;
        latencies.push(start.elapsed());
    }
    let elapsed = started.elapsed();
    drop(near);
    echo.join()
        .map_err(|_| "socket floor: the echo thread panicked".to_owned())?;
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Row {
        path: "socket",
        clients: 1,
        p50: at(0.50),
        p99: at(0.99),
        rate: calls as f64 / elapsed.as_secs_f64(),
        cpu: [None; 3],
    })
}

/// How often a CPU that never sleeps loses it: spins for `span` reading the clock, and counts
/// the gaps between two reads longer than 3 µs (an interrupt, or the hypervisor running
/// something else on this vCPU). Returns (gaps per second, mean gap, longest gap).
fn interruptions(span: Duration) -> (f64, Duration, Duration) {
    let threshold = Duration::from_micros(3);
    let started = Instant::now();
    let mut last = started;
    let (mut count, mut total, mut longest) = (0u32, Duration::ZERO, Duration::ZERO);
    while last.duration_since(started) < span {
        let now = Instant::now();
        let gap = now.duration_since(last);
        if gap > threshold {
            count += 1;
            total += gap;
            longest = longest.max(gap);
        }
        last = now;
    }
    let mean = if count == 0 { Duration::ZERO } else { total / count };
    (
        f64::from(count) / last.duration_since(started).as_secs_f64(),
        mean,
        longest,
    )
}

/// `busy_poll_us` for each daemon; `None` leaves the daemon's default.
#[derive(Debug, Default, Clone, Copy)]
struct Polling {
    proxy: Option<u32>,
    backend: Option<u32>,
}

fn run(calls: usize, polling: Polling) -> Result<(), String> {
    let root = tempfile::Builder::new()
        .prefix("rvirt-bench-")
        .tempdir()
        .map_err(|e| format!("temporary root: {e}"))?;
    let etc = root.path().join("etc/rvirt");
    for (daemon, us) in [("virtproxyd", polling.proxy), ("virtsecretd", polling.backend)] {
        if let Some(us) = us {
            std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
            let file = etc.join(format!("{daemon}.conf"));
            std::fs::write(&file, format!("busy_poll_us = {us}\n"))
                .map_err(|e| format!("{}: {e}", file.display()))?;
        }
    }
    let secrets = rvirt_daemon::launch::start_ready("virtsecretd", root.path(), Duration::from_secs(30))?;
    let proxy_daemon = rvirt_daemon::launch::start_ready("virtproxyd", root.path(), Duration::from_secs(30))?;
    let secrets_pid = Some(secrets.pid());
    let proxy_pid = Some(proxy_daemon.pid());
    let run_dir = root.path().join("run/rvirt");
    let direct = run_dir.join("virtsecretd-sock");
    let proxy = run_dir.join("rvirt-sock");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let floor = socket_floor(calls)?;
    let rows = runtime.block_on(async {
        let mut rows = vec![floor];
        for clients in [1, 8] {
            rows.push(measure("direct", &direct, None, clients, calls, None, [secrets_pid, None]).await?);
            let uri = Some("secret:///system");
            rows.push(
                measure(
                    "proxy",
                    &proxy,
                    uri,
                    clients,
                    calls,
                    None,
                    [secrets_pid, proxy_pid],
                )
                .await?,
            );
        }
        // One client calling now and then: what polling costs when it cannot pay.
        let (calls, pace) = (PACED_CALLS, Some(PACE));
        rows.push(
            measure(
                "direct, every 2 ms",
                &direct,
                None,
                1,
                calls,
                pace,
                [secrets_pid, None],
            )
            .await?,
        );
        let uri = Some("secret:///system");
        rows.push(
            measure(
                "proxy, every 2 ms",
                &proxy,
                uri,
                1,
                calls,
                pace,
                [secrets_pid, proxy_pid],
            )
            .await?,
        );
        Ok::<_, String>(rows)
    })?;
    let shown = |us: Option<u32>| us.map_or("default".to_owned(), |us| us.to_string());
    println!(
        "no-op RPC (HostService.GetType), {calls} calls per row, client on 1 tokio worker, busy_poll_us (default {}): virtproxyd {}, virtsecretd {}",
        rvirt_daemon::config::DEFAULT_BUSY_POLL_US,
        shown(polling.proxy),
        shown(polling.backend),
    );
    println!();
    println!(
        "| path | clients | p50 µs | p99 µs | p99/p50 | calls/s | daemon CPU µs/call | proxy CPU µs/call | client CPU µs/call |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cpu = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.0}", d.as_secs_f64() * 1e6));
    for row in rows {
        let p50 = row.p50.as_secs_f64() * 1e6;
        let p99 = row.p99.as_secs_f64() * 1e6;
        println!(
            "| {} | {} | {p50:.0} | {p99:.0} | {:.2} | {:.0} | {} | {} | {} |",
            row.path,
            row.clients,
            p99 / p50,
            row.rate,
            cpu(row.cpu[0]),
            cpu(row.cpu[1]),
            cpu(row.cpu[2]),
        );
    }
    let (rate, mean, longest) = interruptions(Duration::from_secs(1));
    println!();
    println!(
        "a busy CPU here is interrupted {rate:.0} times/s for {:.1} µs on average (longest {:.0} µs)",
        mean.as_secs_f64() * 1e6,
        longest.as_secs_f64() * 1e6,
    );
    Ok(())
}

fn main() -> ExitCode {
    let mut calls = 10_000;
    let mut polling = Polling::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().map(|v| v.parse::<usize>())) {
            ("--calls", Some(Ok(n))) if n > 0 => calls = n,
            ("--proxy-poll-us", Some(Ok(n))) if u32::try_from(n).is_ok() => {
                polling.proxy = u32::try_from(n).ok();
            }
            ("--backend-poll-us", Some(Ok(n))) if u32::try_from(n).is_ok() => {
                polling.backend = u32::try_from(n).ok();
            }
            _ => {
                eprintln!("usage: proxy-bench [--calls N] [--proxy-poll-us N] [--backend-poll-us N]");
                return ExitCode::FAILURE;
            }
        }
    }
    match run(calls, polling) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
