//! An asynchronous client for QEMU's machine protocol (QMP), over any byte stream (in practice a
//! Unix socket).
//!
//! - [`QmpClient::connect`] / [`QmpClient::from_stream`] read QEMU's greeting, leave
//!   capabilities negotiation (`qmp_capabilities`) and return the client and its [`QmpEvents`].
//! - Commands are typed ([`commands`]); each carries a numeric `id` and its answer is matched by
//!   that id, so any number of tasks may have commands in flight on one connection (the client
//!   is cheap to clone) and answers may arrive in any order.
//! - Every command has a time limit ([`QmpOptions::command_timeout`], or per call with
//!   [`QmpClient::execute_with_timeout`]); a command that times out leaves the connection usable.
//! - When the connection ends (QEMU exits, the socket breaks, QEMU sends something that is not
//!   JSON), every waiting command fails with that [`QmpError`] at once, the event stream yields
//!   it as its last item, and later commands fail with it immediately: nothing hangs.
//!
//! Two tasks serve a connection: a reader that dispatches answers and events, and a writer that
//! sends whole lines, so that a caller that gives up half-way (a dropped future) can never leave
//! half a command on the wire. [`launch`] starts QEMU with its monitor on a socket this process
//! bound beforehand, which makes connecting deterministic.

pub mod commands;
mod error;
mod events;
pub mod launch;
pub mod name;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

pub use commands::QmpCommand;
use commands::*;
pub use error::{QmpError, QmpErrorClass};
pub use events::{EventTimestamp, GuestPanicAction, QmpEvent, QmpEventKind, ShutdownCause};

/// How long to wait for QEMU's greeting by default.
pub const DEFAULT_GREETING_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a command may take by default.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest message accepted from QEMU (`qom-list-types` answers are about 100 KiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Limits of one connection.
#[derive(Debug, Clone)]
pub struct QmpOptions {
    /// How long to wait for the greeting after connecting.
    pub greeting_timeout: Duration,
    /// How long each command may take, unless the call sets its own limit.
    pub command_timeout: Duration,
    /// The longest message accepted from QEMU; a longer one is a protocol error.
    pub max_message_bytes: usize,
}

impl Default for QmpOptions {
    fn default() -> Self {
        QmpOptions {
            greeting_timeout: DEFAULT_GREETING_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// What QEMU said when the connection opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpGreeting {
    /// QEMU's version.
    pub version: VersionInfo,
    /// The optional protocol capabilities QEMU offers (`oob`); this client enables none.
    pub capabilities: Vec<String>,
}

/// The events of one connection, in the order QEMU sent them.
#[derive(Debug)]
pub struct QmpEvents {
    rx: mpsc::UnboundedReceiver<Result<QmpEvent, QmpError>>,
    ended: bool,
}

impl QmpEvents {
    /// The next event; when the connection ends, `Some(Err(why))` once, then `None`.
    pub async fn next(&mut self) -> Option<Result<QmpEvent, QmpError>> {
        if self.ended {
            return None;
        }
        let item = self.rx.recv().await;
        if !matches!(item, Some(Ok(_))) {
            self.ended = true;
        }
        item
    }
}

type Reply = Result<Value, QmpError>;

struct Pending {
    command: String,
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    closed: Option<QmpError>,
}

/// What the client, the reader and the writer share.
struct Shared {
    state: Mutex<State>,
    events: mpsc::UnboundedSender<Result<QmpEvent, QmpError>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends the connection with `error`: every waiter and the event stream get it; the first
    /// cause wins.
    fn close(&self, error: QmpError) {
        let pending = {
            let mut state = self.state();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(error.clone());
            std::mem::take(&mut state.pending)
        };
        for (_, waiter) in pending {
            let _ = waiter.reply.send(Err(error.clone()));
        }
        let _ = self.events.send(Err(error));
    }

    fn closed_error(&self) -> QmpError {
        self.state()
            .closed
            .clone()
            .unwrap_or_else(|| QmpError::Disconnected {
                reason: "the connection closed".into(),
            })
    }

    /// Handles one message from QEMU.
    fn dispatch(&self, line: &[u8]) -> Result<(), QmpError> {
        let value: Value = serde_json::from_slice(line).map_err(|e| QmpError::Protocol {
            detail: format!("a message is not JSON ({e})"),
        })?;
        let Value::Object(message) = value else {
            tracing::warn!("QMP message is not a JSON object; ignored");
            return Ok(());
        };
        if let Some(name) = message.get("event").and_then(Value::as_str) {
            let _ = self.events.send(Ok(QmpEvent::from_message(name, &message)));
            return Ok(());
        }
        if message.contains_key("return") || message.contains_key("error") {
            self.answer(message);
            return Ok(());
        }
        if message.contains_key("QMP") {
            tracing::warn!("QMP greeting in the middle of a connection; ignored");
        } else {
            tracing::warn!("QMP message of unknown shape; ignored");
        }
        Ok(())
    }

    fn answer(&self, mut message: Map<String, Value>) {
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            // QEMU answers a command it could not parse without an id; this client never sends
            // one, so there is nobody to give it to.
            let shown = Value::Object(message).to_string();
            tracing::warn!(message = %shown, "QMP answer without an id of ours; ignored");
            return;
        };
        let Some(pending) = self.state().pending.remove(&id) else {
            tracing::debug!(
                id,
                "QMP answer for a command nobody waits for (timed out?); dropped"
            );
            return;
        };
        let reply = match message.remove("return") {
            Some(value) => Ok(value),
            None => {
                let error = message.remove("error").unwrap_or(Value::Null);
                let text = |key: &str| {
                    error
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                Err(QmpError::Command {
                    command: pending.command,
                    class: QmpErrorClass::from_wire(&text("class")),
                    desc: text("desc"),
                })
            }
        };
        let _ = pending.reply.send(reply);
    }
}

struct Inner {
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    next_id: AtomicU64,
    options: QmpOptions,
    greeting: QmpGreeting,
    tasks: Vec<AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.close(QmpError::Disconnected {
            reason: "the client was closed".into(),
        });
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A connection to one QEMU's monitor. Clones share the connection; it closes when the last
/// clone is dropped.
#[derive(Clone)]
pub struct QmpClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("qemu", &self.inner.greeting.version.qemu)
            .field("closed", &self.inner.shared.state().closed)
            .finish_non_exhaustive()
    }
}

/// Removes a command's waiter when its caller stops waiting (answer, timeout or a dropped
/// future), so the table never grows.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.state().pending.remove(&self.id);
    }
}

impl QmpClient {
    /// Connects to the QMP socket at `path` and negotiates.
    pub async fn connect(path: &Path, options: QmpOptions) -> Result<(QmpClient, QmpEvents), QmpError> {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| QmpError::Connect {
                path: path.to_owned(),
                source: Arc::new(e),
            })?;
        Self::from_stream(stream, options).await
    }

    /// Speaks QMP over an already connected stream: reads the greeting, sends
    /// `qmp_capabilities`, and starts serving the connection.
    pub async fn from_stream<S>(stream: S, options: QmpOptions) -> Result<(QmpClient, QmpEvents), QmpError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        let mut reader = BufReader::new(read);
        let max = options.max_message_bytes;
        // QEMU can emit an event (a guest started without -S: RESUME) on a connection it has
        // accepted but not yet greeted; such events predate the client and are skipped.
        let first = tokio::time::timeout(options.greeting_timeout, async {
            loop {
                let message =
                    read_message(&mut reader, max)
                        .await?
                        .ok_or_else(|| QmpError::Disconnected {
                            reason: "QEMU closed the connection before its greeting".into(),
                        })?;
                if !is_event(&message) {
                    return Ok::<_, QmpError>(message);
                }
                tracing::debug!(
                    event = %String::from_utf8_lossy(&message),
                    "skipping an event sent before the QMP greeting"
                );
            }
        })
        .await
        .map_err(|_| QmpError::Timeout {
            command: "greeting".into(),
            timeout: options.greeting_timeout,
        })??;
        let greeting = parse_greeting(&first)?;

        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            events: events_tx,
        });
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let reader_task = tokio::spawn(read_loop(reader, Arc::clone(&shared), max));
        let writer_task = tokio::spawn(write_loop(write, outgoing_rx, Arc::clone(&shared)));
        let client = QmpClient {
            inner: Arc::new(Inner {
                shared,
                outgoing,
                next_id: AtomicU64::new(1),
                options,
                greeting,
                tasks: vec![reader_task.abort_handle(), writer_task.abort_handle()],
            }),
        };
        client.execute(&QmpCapabilities {}).await?;
        Ok((
            client,
            QmpEvents {
                rx: events_rx,
                ended: false,
            },
        ))
    }

    /// QEMU's greeting.
    pub fn greeting(&self) -> &QmpGreeting {
        &self.inner.greeting
    }

    /// Why the connection is closed, or `None` while it is open.
    pub fn closed(&self) -> Option<QmpError> {
        self.inner.shared.state().closed.clone()
    }

    /// Runs a typed command with the default time limit.
    pub async fn execute<C: QmpCommand>(&self, command: &C) -> Result<C::Output, QmpError> {
        self.execute_with_timeout(command, self.inner.options.command_timeout)
            .await
    }

    /// Runs a typed command with its own time limit.
    pub async fn execute_with_timeout<C: QmpCommand>(
        &self,
        command: &C,
        timeout: Duration,
    ) -> Result<C::Output, QmpError> {
        let arguments = serde_json::to_value(command).map_err(|e| QmpError::Decode {
            command: C::NAME.into(),
            source: Arc::new(e),
        })?;
        let value = self.call(C::NAME, arguments, timeout).await?;
        serde_json::from_value(value).map_err(|e| QmpError::Decode {
            command: C::NAME.into(),
            source: Arc::new(e),
        })
    }

    /// Runs any command by name, with `arguments` (an object, or `null` for none); its answer
    /// as raw JSON.
    pub async fn execute_raw(&self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.call(command, arguments, self.inner.options.command_timeout)
            .await
    }

    async fn call(&self, command: &str, arguments: Value, timeout: Duration) -> Result<Value, QmpError> {
        let shared = &*self.inner.shared;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = shared.state();
            if let Some(error) = &state.closed {
                return Err(error.clone());
            }
            state.pending.insert(
                id,
                Pending {
                    command: command.to_owned(),
                    reply: tx,
                },
            );
        }
        let _guard = PendingGuard { shared, id };
        let mut message = Map::new();
        message.insert("execute".into(), Value::String(command.to_owned()));
        match arguments {
            Value::Null => {}
            Value::Object(map) if map.is_empty() => {}
            other => {
                message.insert("arguments".into(), other);
            }
        }
        message.insert("id".into(), Value::from(id));
        let mut line = Value::Object(message).to_string().into_bytes();
        line.push(b'\n');
        if self.inner.outgoing.send(line).is_err() {
            return Err(shared.closed_error());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(shared.closed_error()),
            Err(_) => Err(QmpError::Timeout {
                command: command.to_owned(),
                timeout,
            }),
        }
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        self.execute(&QueryStatus {}).await
    }

    /// `cont`.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute(&Cont {}).await.map(drop)
    }

    /// `stop`.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute(&Stop {}).await.map(drop)
    }

    /// `system_powerdown`.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute(&SystemPowerdown {}).await.map(drop)
    }

    /// `system_reset`.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute(&SystemReset {}).await.map(drop)
    }

    /// `quit`. QEMU may close the connection before or after answering; both count as done.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute(&Quit {}).await {
            Ok(_) | Err(QmpError::Disconnected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `query-machines`.
    pub async fn query_machines(&self) -> Result<Vec<MachineInfo>, QmpError> {
        self.execute(&QueryMachines::default()).await
    }

    /// `query-cpu-definitions`.
    pub async fn query_cpu_definitions(&self) -> Result<Vec<CpuDefinitionInfo>, QmpError> {
        self.execute(&QueryCpuDefinitions {}).await
    }

    /// `query-version`.
    pub async fn query_version(&self) -> Result<VersionInfo, QmpError> {
        self.execute(&QueryVersion {}).await
    }

    /// `query-kvm`.
    pub async fn query_kvm(&self) -> Result<KvmInfo, QmpError> {
        self.execute(&QueryKvm {}).await
    }

    /// `query-commands`, as names.
    pub async fn query_commands(&self) -> Result<Vec<name::Name>, QmpError> {
        Ok(self
            .execute(&QueryCommands {})
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect())
    }

    /// `query-target`.
    pub async fn query_target(&self) -> Result<TargetInfo, QmpError> {
        self.execute(&QueryTarget {}).await
    }

    /// `qom-list-types`: the concrete types implementing `implements` (all when `None`).
    pub async fn qom_list_types(&self, implements: Option<&str>) -> Result<Vec<ObjectTypeInfo>, QmpError> {
        self.execute(&QomListTypes {
            implements: implements.map(str::to_owned),
            include_abstract: Some(false),
        })
        .await
    }

    /// `device_del`.
    pub async fn device_del(&self, id: &str) -> Result<(), QmpError> {
        self.execute(&DeviceDel { id: id.to_owned() }).await.map(drop)
    }

    /// `query-balloon`.
    pub async fn query_balloon(&self) -> Result<BalloonInfo, QmpError> {
        self.execute(&QueryBalloon {}).await
    }

    /// `balloon`: the target size in bytes.
    pub async fn balloon(&self, bytes: u64) -> Result<(), QmpError> {
        self.execute(&Balloon { value: bytes }).await.map(drop)
    }

    /// `query-cpus-fast`.
    pub async fn query_cpus_fast(&self) -> Result<Vec<CpuInfoFast>, QmpError> {
        self.execute(&QueryCpusFast {}).await
    }

    /// `query-blockstats`.
    pub async fn query_blockstats(&self) -> Result<Vec<BlockStats>, QmpError> {
        self.execute(&QueryBlockstats::default()).await
    }

    /// `human-monitor-command`: an HMP command line and its text output.
    pub async fn human_monitor_command(&self, command_line: &str) -> Result<String, QmpError> {
        self.execute(&HumanMonitorCommand {
            command_line: command_line.to_owned(),
            cpu_index: None,
        })
        .await
    }
}

/// Whether a message is a QMP event (an object with an `event` member).
fn is_event(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Event {
        #[allow(dead_code)]
        event: String,
    }
    serde_json::from_slice::<Event>(line).is_ok()
}

fn parse_greeting(line: &[u8]) -> Result<QmpGreeting, QmpError> {
    #[derive(serde::Deserialize)]
    struct Body {
        version: VersionInfo,
        #[serde(default)]
        capabilities: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Greeting {
        #[serde(rename = "QMP")]
        qmp: Body,
    }
    let greeting: Greeting = serde_json::from_slice(line).map_err(|e| QmpError::Protocol {
        detail: format!("the first message is not a QMP greeting ({e})"),
    })?;
    Ok(QmpGreeting {
        version: greeting.qmp.version,
        capabilities: greeting.qmp.capabilities,
    })
}

/// The next non-blank line, without its line ending; `None` at a clean end of stream.
async fn read_message<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, QmpError> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await.map_err(|e| QmpError::Disconnected {
            reason: format!("cannot read from QEMU: {e}"),
        })?;
        if buf.is_empty() {
            if line.iter().all(u8::is_ascii_whitespace) {
                return Ok(None);
            }
            return Err(QmpError::Disconnected {
                reason: "QEMU closed the connection in the middle of a message".into(),
            });
        }
        let (used, complete) = match buf.iter().position(|b| *b == b'\n') {
            Some(at) => {
                line.extend_from_slice(&buf[..at]);
                (at + 1, true)
            }
            None => {
                line.extend_from_slice(buf);
                (buf.len(), false)
            }
        };
        reader.consume(used);
        if line.len() > max {
            return Err(QmpError::Protocol {
                detail: format!("a message is longer than {max} bytes"),
            });
        }
        if complete {
            if line.iter().all(u8::is_ascii_whitespace) {
                line.clear();
                continue;
            }
            return Ok(Some(line));
        }
    }
}

async fn read_loop<R: AsyncBufRead + Unpin>(mut reader: R, shared: Arc<Shared>, max: usize) {
    let reason = loop {
        match read_message(&mut reader, max).await {
            Ok(Some(line)) => {
                if let Err(e) = shared.dispatch(&line) {
                    break e;
                }
            }
            Ok(None) => {
                break QmpError::Disconnected {
                    reason: "QEMU closed the connection".into(),
                };
            }
            Err(e) => break e,
        }
    };
    tracing::debug!(error = %reason, "QMP connection ended");
    shared.close(reason);
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    while let Some(line) = outgoing.recv().await {
        let written = async {
            writer.write_all(&line).await?;
            writer.flush().await
        };
        if let Err(e) = written.await {
            shared.close(QmpError::Disconnected {
                reason: format!("cannot write to QEMU: {e}"),
            });
            return;
        }
    }
    let _ = writer.shutdown().await;
}
