//! Secret commands: `secret-list`, `secret-define`, `secret-set-value` (from a file, base64, or
//! typed at the terminal without echo), `secret-get-value`, ... with virsh's messages.

use base64::Engine as _;
use rvirt::Secret;
use rvirt_proto::v1::{SecretDefineFlag, SecretListFlag};

use super::{CmdError, CmdResult, exclusive, io_text, read_file};
use crate::format;
use crate::parse::Args;
use crate::shell::Shell;

async fn lookup(sh: &mut Shell, text: &str) -> Result<Secret, CmdError> {
    let conn = sh.conn().await?;
    conn.lookup_secret_by_uuid(text)
        .await
        .map_err(|e| CmdError::with(format!("failed to get secret '{text}'"), e))
}

/// Decodes base64 as glib does for virsh: characters outside the alphabet are skipped.
fn decode_base64(text: &[u8]) -> Result<Vec<u8>, CmdError> {
    let clean: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .map_err(|e| CmdError::msg(format!("Failed to decode the base64 secret value: {e}")))
}

/// Reads a line from the terminal with echo off. The prompt is shown only once echo is off, so
/// nothing typed after it can appear on the screen.
fn read_password(prompt: impl FnOnce()) -> std::io::Result<Vec<u8>> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    use std::io::{BufRead as _, Write as _};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let saved = tcgetattr(&tty).map_err(std::io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&tty, SetArg::TCSAFLUSH, &quiet).map_err(std::io::Error::from)?;
    prompt();
    let mut line = Vec::new();
    let read = std::io::BufReader::new(&tty).read_until(b'\n', &mut line);
    let restored = tcsetattr(&tty, SetArg::TCSAFLUSH, &saved).map_err(std::io::Error::from);
    let _ = (&tty).write_all(b"\n");
    read?;
    restored?;
    while line.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        line.pop();
    }
    Ok(line)
}

pub(crate) async fn run(sh: &mut Shell, args: &Args, command: &str) -> CmdResult {
    match command {
        "secret-list" => {
            let mut flags = 0;
            for (name, flag) in [
                ("ephemeral", SecretListFlag::Ephemeral),
                ("no-ephemeral", SecretListFlag::NoEphemeral),
                ("private", SecretListFlag::Private),
                ("no-private", SecretListFlag::NoPrivate),
            ] {
                if args.flag(name) {
                    flags |= flag as u32;
                }
            }
            let conn = sh.conn().await?;
            let mut secrets = conn
                .list_all_secrets(flags)
                .await
                .map_err(|e| CmdError::with("Failed to list node secrets", e))?;
            secrets.sort_by_key(|x| x.uuid().to_lowercase());
            let rows: Vec<(String, &str, String)> = secrets
                .iter()
                .map(|s| {
                    (
                        s.uuid().to_owned(),
                        format::secret_usage(s.usage_type()),
                        s.usage_id().to_owned(),
                    )
                })
                .collect();
            let header = !sh.quiet;
            sh.print(&format::secret_list(&rows, header));
            Ok(())
        }
        "secret-define" => {
            let file = args.req("file");
            let xml = read_file(file)?;
            let flags = if args.flag("validate") {
                SecretDefineFlag::Validate as u32
            } else {
                0
            };
            let conn = sh.conn().await?;
            let secret = conn
                .define_secret_xml(&xml, flags)
                .await
                .map_err(|e| CmdError::with(format!("Failed to set attributes from {file}"), e))?;
            sh.print_extra(&format!("Secret {} created\n", secret.uuid()));
            Ok(())
        }
        "secret-dumpxml" => {
            let secret = lookup(sh, args.req("secret")).await?;
            let xml = secret.xml_desc().await?;
            sh.print(&super::domain::with_newline(xml));
            Ok(())
        }
        "secret-undefine" => {
            let given = args.req("secret").to_owned();
            let secret = lookup(sh, &given).await?;
            secret
                .undefine()
                .await
                .map_err(|e| CmdError::with(format!("Failed to delete secret {given}"), e))?;
            sh.print_extra(&format!("Secret {given} deleted\n"));
            Ok(())
        }
        "secret-get-value" => {
            let secret = lookup(sh, args.req("secret")).await?;
            let mut value = secret.value().await?;
            if args.flag("plain") {
                let text = String::from_utf8_lossy(&value).into_owned();
                sh.print(&text);
            } else {
                let text = base64::engine::general_purpose::STANDARD.encode(&value);
                sh.print(&text);
            }
            value.fill(0);
            Ok(())
        }
        _ => set_value(sh, args).await,
    }
}

async fn set_value(sh: &mut Shell, args: &Args) -> CmdResult {
    exclusive(args, "file", "base64")?;
    exclusive(args, "plain", "base64")?;
    exclusive(args, "interactive", "base64")?;
    exclusive(args, "interactive", "plain")?;
    exclusive(args, "interactive", "file")?;
    let secret = lookup(sh, args.req("secret")).await?;
    let mut plain = args.flag("plain");
    let mut raw: Vec<u8> = if let Some(b64) = args.get("base64") {
        // virsh warns, and goes on.
        sh.report(&["Passing secret value as command-line argument is insecure!".into()]);
        b64.as_bytes().to_vec()
    } else if let Some(file) = args.get("file") {
        let mut bytes = std::fs::read(file)
            .map_err(|e| CmdError::msg(format!("Failed to open file '{file}': {}", io_text(&e))))?;
        bytes.truncate(1024);
        bytes
    } else if args.flag("interactive") {
        plain = true;
        read_password(|| sh.print("Enter new value for secret:"))
            .map_err(|_| CmdError::msg("Failed to read secret"))?
    } else {
        return Err(CmdError::msg("Input secret value is missing"));
    };
    let mut value = if plain {
        std::mem::take(&mut raw)
    } else {
        decode_base64(&raw)?
    };
    raw.fill(0);
    let result = secret.set_value(&value).await;
    value.fill(0);
    result.map_err(|e| CmdError::with("Failed to set secret value", e))?;
    sh.print_extra("Secret value set\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decoding_skips_newlines_like_glib() {
        assert_eq!(decode_base64(b"c2VjcmV0\n").expect("decode"), b"secret");
        assert!(decode_base64(b"c2VjcmV").is_err());
    }
}
