//! Running host tools (`qemu-img`, `mount`, `lvcreate`, ...): the one seam between the driver
//! and the host's commands, so backends can be tested with a recording runner.
//!
//! Children are killed when the call that waits for them is dropped (a cancelled RPC), and
//! their standard error becomes part of the error message.

use std::ffi::OsString;
use std::process::Stdio;

use crate::error::{Result, StorageError};

/// Runs a host command and returns its standard output.
#[tonic::async_trait]
pub trait CommandRunner: Send + Sync + std::fmt::Debug + 'static {
    /// Runs `program` with `args`; fails with the command's standard error when it fails.
    async fn run(&self, program: &str, args: &[OsString]) -> Result<Vec<u8>>;
}

/// The real runner.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostRunner;

#[tonic::async_trait]
impl CommandRunner for HostRunner {
    async fn run(&self, program: &str, args: &[OsString]) -> Result<Vec<u8>> {
        tracing::debug!(program, ?args, "running");
        let output = tokio::process::Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            // LVM tools warn about every inherited descriptor otherwise.
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                StorageError::internal(format!(
                    "Cannot run {program}: {e}: install it (see docs/storage.md)"
                ))
            })?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(StorageError::failed(format!(
                "{program} failed ({}): {}",
                output.status,
                stderr.trim()
            )))
        }
    }
}

/// A runner that records commands and answers from a script (tests).
#[derive(Debug, Default)]
pub struct RecordingRunner {
    /// Every command run, as one string each.
    pub calls: std::sync::Mutex<Vec<String>>,
    /// Output to return for commands whose line starts with the key.
    pub outputs: std::sync::Mutex<Vec<(String, Result<Vec<u8>>)>>,
}

#[tonic::async_trait]
impl CommandRunner for RecordingRunner {
    async fn run(&self, program: &str, args: &[OsString]) -> Result<Vec<u8>> {
        let mut line = program.to_owned();
        for a in args {
            line.push(' ');
            line.push_str(&a.to_string_lossy());
        }
        let answer = self
            .outputs
            .lock()
            .map_err(|_| StorageError::internal("poisoned"))?
            .iter()
            .find(|(prefix, _)| line.starts_with(prefix.as_str()))
            .map(|(_, out)| out.clone());
        self.calls
            .lock()
            .map_err(|_| StorageError::internal("poisoned"))?
            .push(line);
        answer.unwrap_or(Ok(Vec::new()))
    }
}
