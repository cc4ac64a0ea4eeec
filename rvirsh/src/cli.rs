//! The process: global options (as virsh's getopt with `+`: options stop at the first
//! command word), then one command from the arguments, or commands from standard input one per
//! line (with line editing, history and completion when it is a terminal).

use std::io::{BufRead as _, IsTerminal as _};
use std::process::ExitCode;

use crate::commands::{COMMANDS, find};
use crate::shell::Shell;

/// The global options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Global {
    /// `-c URI`.
    pub uri: Option<String>,
    /// `-r`.
    pub read_only: bool,
    /// `-q`.
    pub quiet: bool,
    /// `-e CHAR`.
    pub escape: Option<String>,
    /// What to do instead of running commands.
    pub action: Action,
    /// The command words after the options.
    pub command: Vec<String>,
}

/// `--help` and `--version` end the process before any command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Action {
    /// Run commands.
    #[default]
    Run,
    /// Print usage.
    Help,
    /// Print the short version.
    Version,
    /// Print the long version.
    LongVersion,
}

/// Parses the global options; errors are virsh's messages.
pub fn parse_global(args: &[String]) -> Result<Global, String> {
    let mut global = Global::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            let mut value = |what: &str| -> Result<String, String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None if i < args.len() => {
                        i += 1;
                        Ok(args[i - 1].clone())
                    }
                    None => Err(format!("option '--{what}' requires an argument")),
                }
            };
            match name {
                "connect" => global.uri = Some(value("connect")?),
                "escape" => global.escape = Some(value("escape")?),
                "readonly" => global.read_only = true,
                "quiet" => global.quiet = true,
                "help" => global.action = Action::Help,
                "version" => {
                    global.action = match inline.as_deref() {
                        None | Some("short") => Action::Version,
                        Some("long") => Action::LongVersion,
                        Some(other) => return Err(format!("unknown version type '{other}'")),
                    }
                }
                "debug" | "log" | "keepalive-interval" | "keepalive-count" => {
                    value(name)?;
                }
                "timing" | "no-pkttyagent" => {}
                other => return Err(format!("unsupported option '--{other}'. See --help.")),
            }
            continue;
        }
        if let Some(shorts) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            let chars: Vec<char> = shorts.chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                j += 1;
                let takes_value = matches!(c, 'c' | 'e' | 'd' | 'l' | 'k' | 'K');
                if takes_value {
                    let rest: String = chars[j..].iter().collect();
                    let value = if !rest.is_empty() {
                        rest
                    } else if i < args.len() {
                        i += 1;
                        args[i - 1].clone()
                    } else {
                        return Err(format!("option requires an argument -- '{c}'"));
                    };
                    match c {
                        'c' => global.uri = Some(value),
                        'e' => global.escape = Some(value),
                        _ => {}
                    }
                    break;
                }
                match c {
                    'r' => global.read_only = true,
                    'q' => global.quiet = true,
                    'h' => global.action = Action::Help,
                    'v' => global.action = Action::Version,
                    'V' => global.action = Action::LongVersion,
                    't' => {}
                    other => return Err(format!("unsupported option '-{other}'. See --help.")),
                }
            }
            continue;
        }
        i -= 1;
        break;
    }
    global.command = args[i..].to_vec();
    Ok(global)
}

/// Runs the process; `args[0]` is the program name.
pub fn main(args: Vec<String>) -> ExitCode {
    let program = args
        .first()
        .and_then(|p| std::path::Path::new(p).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("rvirsh")
        .to_owned();
    let global = match parse_global(args.get(1..).unwrap_or_default()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match global.action {
        Action::Help => {
            print!("{}", crate::help::usage(&program));
            return ExitCode::SUCCESS;
        }
        Action::Version => {
            println!("{}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Action::LongVersion => {
            println!(
                "rvirsh, the command line of rvirt {} (libvirt 11.3.0 API)\nSee the README of rvirt for documentation.",
                env!("CARGO_PKG_VERSION"),
            );
            return ExitCode::SUCCESS;
        }
        Action::Run => {}
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(global))
}

async fn run(global: Global) -> ExitCode {
    let mut shell = Shell::new(
        global.uri.clone(),
        global.read_only,
        global.quiet,
        Box::new(std::io::stdout()),
        Box::new(std::io::stderr()),
    );
    if let Some(escape) = &global.escape {
        shell.escape = escape.clone();
    }
    let interrupt = shell.interrupt.clone();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            interrupt.notify_waiters();
        }
    });
    let ok = if !global.command.is_empty() {
        // One argument is a command string (quotes, `;`), several are the words of one command.
        if global.command.len() == 1 {
            shell.run_line(&global.command[0]).await
        } else {
            shell.run_words(&global.command).await
        }
    } else if std::io::stdin().is_terminal() {
        interactive(&mut shell).await;
        true
    } else {
        batch(&mut shell).await
    };
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Commands from a pipe or file, one per line; fails if any command failed.
async fn batch(shell: &mut Shell) -> bool {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
    // Standard input is read on its own thread so `event` loops and transfers keep running.
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let mut ok = true;
    while let Some(line) = rx.recv().await {
        ok &= shell.run_line(&line).await;
        if is_quit(&line) {
            break;
        }
    }
    ok
}

fn is_quit(line: &str) -> bool {
    crate::parse::split_line(line).is_ok_and(|commands| {
        commands
            .iter()
            .any(|words| words.first().is_some_and(|w| w == "quit" || w == "exit"))
    })
}

/// Completes command names, then option names.
#[derive(Debug, Default)]
struct Completion;

impl rustyline::completion::Completer for Completion {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let before = &line[..pos];
        let start = before.rfind([' ', '\t', ';']).map_or(0, |i| i + 1);
        let word = &before[start..];
        let command_start = before.rfind(';').map_or(0, |i| i + 1);
        let words: Vec<&str> = before[command_start..start].split_whitespace().collect();
        let candidates = match words.first() {
            None => COMMANDS
                .iter()
                .map(|c| c.name)
                .filter(|n| n.starts_with(word))
                .map(|n| format!("{n} "))
                .collect(),
            Some(name) => match find(name) {
                Some(def) if word.starts_with('-') || word.is_empty() => def
                    .opts
                    .iter()
                    .map(|o| format!("--{}", o.name))
                    .filter(|o| o.starts_with(word) && !words.contains(&o.as_str()))
                    .map(|o| format!("{o} "))
                    .collect(),
                _ => Vec::new(),
            },
        };
        Ok((start, candidates))
    }
}

impl rustyline::hint::Hinter for Completion {
    type Hint = String;
}

impl rustyline::highlight::Highlighter for Completion {}

impl rustyline::validate::Validator for Completion {}

impl rustyline::Helper for Completion {}

/// The interactive shell: virsh's banner and prompt, line editing, history, completion.
async fn interactive(shell: &mut Shell) {
    if !shell.quiet {
        shell.print(
            "Welcome to rvirsh, the virtualization interactive terminal.\n\n\
             Type:  'help' for help with commands\n       'quit' to quit\n\n",
        );
    }
    let config = rustyline::Config::builder().auto_add_history(true).build();
    let mut editor: rustyline::Editor<Completion, rustyline::history::MemHistory> =
        match rustyline::Editor::with_history(config, rustyline::history::MemHistory::new()) {
            Ok(e) => e,
            Err(e) => {
                shell.report(&[format!("cannot use the terminal: {e}")]);
                return;
            }
        };
    editor.set_helper(Some(Completion));
    loop {
        let prompt = if shell.read_only { "rvirsh > " } else { "rvirsh # " };
        // The editor blocks; it runs on a blocking thread and comes back with the line.
        let (back, line) = tokio::task::spawn_blocking(move || {
            let line = editor.readline(prompt);
            (editor, line)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        editor = back;
        match line {
            Ok(line) => {
                shell.run_line(&line).await;
                if is_quit(&line) {
                    break;
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => {
                // End of input: a line break after the lone prompt, as virsh.
                shell.print("\n");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Global, String> {
        parse_global(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_stop_at_the_first_command_word() {
        let g = parse(&["-c", "test:///default", "-rq", "list", "-r", "--all"]).expect("parse");
        assert_eq!(g.uri.as_deref(), Some("test:///default"));
        assert!(g.read_only && g.quiet);
        assert_eq!(g.command, ["list", "-r", "--all"]);
    }

    #[test]
    fn attached_and_long_forms() {
        let g = parse(&["-ctest:///default", "--readonly", "uri"]).expect("parse");
        assert_eq!(g.uri.as_deref(), Some("test:///default"));
        let g = parse(&["--connect=qemu:///system", "--quiet"]).expect("parse");
        assert_eq!((g.uri.as_deref(), g.quiet), (Some("qemu:///system"), true));
        assert!(g.command.is_empty());
    }

    #[test]
    fn bad_options_use_virshs_message() {
        assert_eq!(
            parse(&["-z"]).expect_err("bad"),
            "unsupported option '-z'. See --help."
        );
        assert_eq!(
            parse(&["-c"]).expect_err("missing"),
            "option requires an argument -- 'c'"
        );
    }

    #[test]
    fn quit_lines_are_recognised() {
        assert!(is_quit("quit"));
        assert!(is_quit("  exit # bye"));
        assert!(is_quit("list; quit"));
        assert!(!is_quit("list --all"));
    }
}
