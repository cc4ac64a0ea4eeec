//! `console`: the guest's serial console over the OpenDomainConsole stream, with the terminal in
//! raw mode and virsh's escape character (`^]` by default) to leave. A daemon that does not
//! serve consoles yet answers OPERATION_UNSUPPORTED, which is printed as such.

use std::io::{IsTerminal as _, Read as _, Write as _};

use rvirt::Domain;
use rvirt_proto::v1::domain_service_client::DomainServiceClient;
use rvirt_proto::v1::*;
use tokio_stream::StreamExt as _;

use super::{CmdError, CmdResult};
use crate::shell::Shell;

/// The byte an escape sequence like `^]` stands for (a control character), or the first byte
/// of anything else.
pub fn escape_byte(escape: &str) -> u8 {
    let bytes = escape.as_bytes();
    match bytes {
        [b'^', c] => c.to_ascii_uppercase() ^ 0x40,
        [c, ..] => *c,
        [] => 0x1d,
    }
}

/// The part of `input` to send before the escape byte, and whether the escape was typed.
pub fn split_at_escape(input: &[u8], escape: u8) -> (&[u8], bool) {
    match input.iter().position(|b| *b == escape) {
        Some(i) => (&input[..i], true),
        None => (input, false),
    }
}

/// Puts standard input's terminal in raw mode until dropped.
struct RawTerminal {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawTerminal {
    fn new() -> RawTerminal {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawTerminal { saved: None };
        }
        let Ok(saved) = nix::sys::termios::tcgetattr(&stdin) else {
            return RawTerminal { saved: None };
        };
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        if nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSAFLUSH, &raw).is_err() {
            return RawTerminal { saved: None };
        }
        RawTerminal { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ =
                nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSAFLUSH, saved);
        }
    }
}

/// Opens the console of a running domain and relays bytes until the escape, the end of input
/// or the daemon closes it.
pub(crate) async fn run(sh: &mut Shell, dom: &Domain, dev_name: &str, flags: u32) -> CmdResult {
    let state = dom.state().await?;
    if !matches!(state.state(), DomainState::Running | DomainState::Paused) {
        return Err(CmdError::msg("The domain is not running"));
    }
    let conn = sh.conn().await?;
    let mut client = DomainServiceClient::new(conn.transport("rvirt.v1.DomainService")?);
    let (tx, rx) = tokio::sync::mpsc::channel::<OpenDomainConsoleRequest>(16);
    let open = OpenDomainConsoleRequest {
        message: Some(open_domain_console_request::Message::Open(DomainConsoleOpen {
            domain: Some(DomainRef {
                key: Some(domain_ref::Key::Uuid(dom.uuid().to_owned())),
            }),
            dev_name: dev_name.to_owned(),
            flags,
        })),
    };
    if tx.send(open).await.is_err() {
        return Err(CmdError::msg("The console stream closed before it opened"));
    }
    let mut output = client
        .open_domain_console(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|status| {
            let e = rvirt::Error::from(status);
            if e.code == ErrorCode::OperationUnsupported {
                CmdError::msg(format!(
                    "Operation not supported: the console of domain '{}' cannot be opened: {}",
                    dom.name(),
                    e.message
                ))
            } else {
                CmdError::from(e)
            }
        })?
        .into_inner();
    let escape = escape_byte(&sh.escape);
    let mut banner = format!(
        "Connected to domain '{}'\nEscape character is {}",
        dom.name(),
        sh.escape
    );
    if let [b'^', c] = sh.escape.as_bytes() {
        banner.push_str(&format!(" (Ctrl + {})", *c as char));
    }
    banner.push('\n');
    sh.print_extra(&banner);
    let raw = RawTerminal::new();
    // Standard input is read on its own thread; it stops at the escape or the end of input.
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let (send, escaped) = split_at_escape(&buf[..n], escape);
            if !send.is_empty() && keys_tx.blocking_send(send.to_vec()).is_err() {
                break;
            }
            if escaped {
                break;
            }
        }
    });
    let mut result = Ok(());
    loop {
        tokio::select! {
            key = keys.recv() => match key {
                Some(bytes) => {
                    let data = OpenDomainConsoleRequest {
                        message: Some(open_domain_console_request::Message::Data(bytes)),
                    };
                    if tx.send(data).await.is_err() {
                        break;
                    }
                }
                // Escape or end of input: leave, closing our side of the stream.
                None => break,
            },
            message = output.next() => match message {
                Some(Ok(OpenDomainConsoleResponse { message: Some(open_domain_console_response::Message::Data(bytes)) })) => {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&bytes);
                    let _ = out.flush();
                }
                Some(Ok(OpenDomainConsoleResponse { message: Some(open_domain_console_response::Message::Closed(closed)) })) => {
                    if closed.reason() != DomainConsoleCloseReason::ClientClosed && !closed.message.is_empty() {
                        result = Err(CmdError::msg(closed.message));
                    }
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(status)) => {
                    result = Err(CmdError::from(rvirt::Error::from(status)));
                    break;
                }
                None => break,
            },
        }
    }
    drop(tx);
    drop(raw);
    sh.print_extra("\n");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_control_characters() {
        assert_eq!(escape_byte("^]"), 0x1d);
        assert_eq!(escape_byte("^a"), 0x01);
        assert_eq!(escape_byte("~"), b'~');
    }

    #[test]
    fn input_stops_at_the_escape() {
        assert_eq!(split_at_escape(b"ls\r\x1dmore", 0x1d), (&b"ls\r"[..], true));
        assert_eq!(split_at_escape(b"ls\r", 0x1d), (&b"ls\r"[..], false));
    }
}
