//! `event`: waits for domain events and prints virsh's line for each, one-shot or `--loop`
//! until `--timeout` or Ctrl-C, then how many arrived.

use std::sync::Arc;
use std::time::Duration;

use rvirt::watch::{Subscription, WatchItem};
use rvirt_proto::v1::{DomainEvent, DomainRef, WatchDomainEventsRequest, domain_ref};
use tokio_stream::StreamExt as _;

use super::{CmdError, CmdResult};
use crate::format;
use crate::parse::Args;
use crate::shell::Shell;

/// How an event wait behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventOptions {
    /// Keep going after the first event.
    pub repeat: bool,
    /// Stop after this long.
    pub timeout: Option<Duration>,
    /// Prefix each line with the time.
    pub timestamp: bool,
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// One-shot and one event arrived.
    Done,
    /// The timeout passed.
    TimedOut,
    /// Ctrl-C (or the caller) interrupted it.
    Interrupted,
    /// The subscription ended.
    Closed,
}

/// `YYYY-MM-DD HH:MM:SS.mmm+0000`, as libvirt's `virTimeStringNowRaw` (UTC).
fn timestamp_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}+0000",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Prints each event of `events` with `print` until the wait ends; returns the count and why.
pub async fn event_loop(
    events: &mut Subscription<DomainEvent>,
    options: EventOptions,
    interrupt: Arc<tokio::sync::Notify>,
    print: &mut dyn FnMut(&str),
) -> (u64, End) {
    let deadline = options.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut count = 0u64;
    loop {
        let timeout = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            item = events.next() => match item {
                Some(WatchItem::Event(event)) => {
                    let line = format::domain_event_line(&event);
                    if options.timestamp {
                        print(&format!("{}: {line}", timestamp_now()));
                    } else {
                        print(&line);
                    }
                    count += 1;
                    if !options.repeat {
                        return (count, End::Done);
                    }
                }
                Some(WatchItem::Resync(_)) => {}
                None => return (count, End::Closed),
            },
            _ = timeout => return (count, End::TimedOut),
            _ = interrupt.notified() => return (count, End::Interrupted),
        }
    }
}

pub(crate) async fn event(sh: &mut Shell, args: &Args) -> CmdResult {
    if args.flag("list") {
        let names: String = format::DOMAIN_EVENT_NAMES
            .iter()
            .map(|n| format!("{n}\n"))
            .collect();
        sh.print(&names);
        return Ok(());
    }
    let mut filter = WatchDomainEventsRequest::default();
    match (args.get("event"), args.flag("all")) {
        (Some(_), true) => return Err(CmdError::msg("Options --all and --event are mutually exclusive")),
        (None, false) => {
            return Err(CmdError::msg(
                "one of --list, --all, or --event <type> is required",
            ));
        }
        (Some(name), false) => {
            let id = format::DOMAIN_EVENT_NAMES
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| CmdError::msg(format!("unknown event type {name}")))?;
            filter.event_ids = vec![id as i32];
        }
        (None, true) => {}
    }
    let timeout = match args.get("timeout") {
        Some(t) => match t.parse::<u32>() {
            Ok(secs) if secs > 0 => Some(Duration::from_secs(u64::from(secs))),
            _ => {
                return Err(CmdError::msg(format!(
                    "Numeric value '{t}' for <timeout> option is malformed or out of range"
                )));
            }
        },
        None => None,
    };
    if let Some(text) = args.get("domain") {
        let dom = super::domain::lookup(sh, text, super::domain::ANY).await?;
        filter.domain = Some(DomainRef {
            key: Some(domain_ref::Key::Uuid(dom.uuid().to_owned())),
        });
    }
    let conn = sh.conn().await?;
    let mut events = conn.domain_events(filter).await?;
    let options = EventOptions {
        repeat: args.flag("loop"),
        timeout,
        timestamp: args.flag("timestamp"),
    };
    let interrupt = sh.interrupt.clone();
    // Lines are printed as they arrive.
    let (count, end) = event_loop(&mut events, options, interrupt, &mut |line| sh.print(line)).await;
    match end {
        End::Interrupted => sh.print("event loop interrupted\n"),
        End::TimedOut => sh.print("event loop timed out\n"),
        End::Closed => {
            let reason = events.closed().await;
            sh.print(&format!("events received: {count}\n"));
            return Err(CmdError::msg(reason.message));
        }
        End::Done => {}
    }
    sh.print(&format!("events received: {count}\n"));
    if count == 0 {
        return Err(CmdError::silent());
    }
    Ok(())
}
