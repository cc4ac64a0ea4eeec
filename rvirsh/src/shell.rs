//! The shell: one connection (opened on first use), the output streams, and running command
//! lines the way virsh's `vshCommandRun` does (errors as `error: ...` lines on stderr, a blank
//! line after each command unless `-q`).

use std::io::Write;
use std::sync::Arc;

use rvirt::Connect;

use crate::commands::{self, CmdError};
use crate::parse;

/// Where output goes: stdout and stderr of the process, or buffers in tests.
pub type Sink = Box<dyn Write + Send>;

/// One rvirsh session.
pub struct Shell {
    /// The URI asked for with `-c` or `connect`; `None` resolves the default on first use.
    pub uri: Option<String>,
    /// `-r`: read-only connection.
    pub read_only: bool,
    /// `-q`: no informational messages and no table headers.
    pub quiet: bool,
    /// Commands come from a terminal (progress bars, prompts).
    pub interactive: bool,
    /// The console escape character (`-e`), `^]` by default.
    pub escape: String,
    conn: Option<Connect>,
    out: Sink,
    err: Sink,
    /// Fires on Ctrl-C: ends `event` loops and transfers.
    pub interrupt: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("uri", &self.uri)
            .field("read_only", &self.read_only)
            .field("quiet", &self.quiet)
            .finish_non_exhaustive()
    }
}

impl Shell {
    /// A shell writing to `out` and `err`.
    pub fn new(uri: Option<String>, read_only: bool, quiet: bool, out: Sink, err: Sink) -> Shell {
        Shell {
            uri,
            read_only,
            quiet,
            interactive: false,
            escape: "^]".into(),
            conn: None,
            out,
            err,
            interrupt: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Prints to standard output.
    pub fn print(&mut self, text: &str) {
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }

    /// Prints an informational message, unless `-q`.
    pub fn print_extra(&mut self, text: &str) {
        if !self.quiet {
            self.print(text);
        }
    }

    /// Prints `error: LINE` for each line, on standard error.
    pub fn report(&mut self, lines: &[String]) {
        let _ = self.out.flush();
        for line in lines {
            let _ = writeln!(self.err, "error: {line}");
        }
        let _ = self.err.flush();
    }

    /// The connection, opened on first use (virsh connects before the first command that
    /// needs it).
    pub async fn conn(&mut self) -> Result<Connect, CmdError> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let uri = match &self.uri {
            Some(uri) => uri.clone(),
            None => crate::uri_default::default_uri(),
        };
        let opened = if self.read_only {
            Connect::open_read_only(&uri).await
        } else {
            Connect::open(&uri).await
        };
        match opened {
            Ok(conn) => {
                self.uri = Some(uri);
                self.conn = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => Err(CmdError::with("failed to connect to the hypervisor", e)),
        }
    }

    /// Drops the connection and uses `uri` from the next command on (`connect`).
    pub async fn reconnect(&mut self, uri: Option<String>, read_only: bool) -> Result<(), CmdError> {
        self.conn = None;
        self.read_only = read_only;
        if uri.is_some() {
            self.uri = uri;
        }
        self.conn().await.map(|_| ())
    }

    /// Runs one line of commands (`;`-separated); returns whether every command succeeded.
    pub async fn run_line(&mut self, line: &str) -> bool {
        match parse::split_line(line) {
            Ok(commands) => {
                let mut ok = true;
                for words in commands {
                    ok &= self.run_words(&words).await;
                }
                ok
            }
            Err(e) => {
                self.report(&[e]);
                false
            }
        }
    }

    /// Runs one command given as words (the name first).
    pub async fn run_words(&mut self, words: &[String]) -> bool {
        let Some((name, rest)) = words.split_first() else {
            return true;
        };
        let Some(def) = commands::find(name) else {
            self.report(&[format!("unknown command: '{name}'")]);
            return false;
        };
        // `--help` on any command shows that command's help, as in virsh.
        if rest.iter().any(|w| w == "--help") {
            let text = crate::help::command_help(def);
            self.print(&text);
            return true;
        }
        let args = match parse::parse_args(def.name, def.opts, rest) {
            Ok(args) => args,
            Err(e) => {
                self.report(&[e]);
                return false;
            }
        };
        let result = commands::dispatch(self, def, &args).await;
        let ok = match result {
            Ok(()) => true,
            Err(e) => {
                self.report(&e.lines);
                false
            }
        };
        if def.name != "quit" && def.name != "exit" {
            self.print_extra("\n");
        }
        ok
    }
}
