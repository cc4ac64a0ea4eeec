//! `help`, `help GROUP`, `help COMMAND` and `rvirsh --help`, laid out as virsh's.

use std::fmt::Write as _;

use crate::commands::{COMMANDS, CmdDef, CmdError, GROUPS, Group};
use crate::parse::Kind;

fn group_listing(out: &mut String, group: Group) {
    let _ = writeln!(out, " {} (help keyword '{}'):", group.name, group.keyword);
    for cmd in COMMANDS.iter().filter(|c| c.group == group) {
        let _ = writeln!(out, "    {:<30} {}", cmd.name, cmd.help);
    }
    out.push('\n');
}

/// `help` with or without a command or group keyword.
pub fn help(topic: Option<&str>) -> Result<String, CmdError> {
    let mut out = String::new();
    match topic {
        None => {
            out.push_str("Grouping of commands:\n\n");
            for group in GROUPS {
                group_listing(&mut out, *group);
            }
        }
        Some(name) => {
            if let Some(cmd) = crate::commands::find(name) {
                return Ok(command_help(cmd));
            }
            let group = GROUPS
                .iter()
                .find(|g| g.keyword == name)
                .ok_or_else(|| CmdError::msg(format!("command or command group '{name}' doesn't exist")))?;
            group_listing(&mut out, *group);
        }
    }
    Ok(out)
}

/// `help COMMAND`: name, synopsis, description and options.
pub fn command_help(cmd: &CmdDef) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "  NAME\n    {} - {}\n", cmd.name, cmd.help);
    let mut synopsis = format!("    {}", cmd.name);
    for opt in cmd.opts {
        let _ = match opt.kind {
            Kind::Bool => write!(synopsis, " [--{}]", opt.name),
            Kind::Data => write!(synopsis, " <{}>", opt.name),
            Kind::Int => write!(synopsis, " [--{} <number>]", opt.name),
            Kind::String | Kind::NamedOnly => write!(synopsis, " [--{} <string>]", opt.name),
            Kind::RequiredNamed => write!(synopsis, " --{} <string>", opt.name),
        };
    }
    let _ = writeln!(out, "  SYNOPSIS\n{synopsis}\n");
    if !cmd.desc.is_empty() {
        let _ = writeln!(out, "  DESCRIPTION\n    {}\n", cmd.desc);
    }
    if !cmd.opts.is_empty() {
        out.push_str("  OPTIONS\n");
        for opt in cmd.opts {
            let label = match opt.kind {
                Kind::Bool => format!("--{}", opt.name),
                Kind::Data => format!("[--{}] <string>", opt.name),
                Kind::Int => format!("--{} <number>", opt.name),
                _ => format!("--{} <string>", opt.name),
            };
            let _ = writeln!(out, "    {label:<15}  {}", opt.help);
        }
        out.push('\n');
    }
    out
}

/// `rvirsh --help`.
pub fn usage(program: &str) -> String {
    format!(
        "\n{program} [options]... [<command_string>]\n\
         {program} [options]... <command> [args...]\n\n\
         \x20 options:\n\
         \x20   -c | --connect=URI      hypervisor connection URI\n\
         \x20   -e | --escape <char>    set escape sequence for console\n\
         \x20   -h | --help             this help\n\
         \x20   -q | --quiet            quiet mode\n\
         \x20   -r | --readonly         connect readonly\n\
         \x20   -v                      short version\n\
         \x20   -V                      long version\n\
         \x20        --version[=TYPE]   version, TYPE is short or long (default short)\n\n\
         \x20 commands (non interactive mode):\n\n{}\n\
         \x20 (specify help <group> for details about the commands in the group)\n\n\
         \x20 (specify help <command> for details about the command)\n\n",
        help(None).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_help_lists_groups_and_commands() {
        let text = help(None).expect("help");
        assert!(text.starts_with("Grouping of commands:\n\n Domain Management (help keyword 'domain'):\n"));
        assert!(text.contains("    list                           list domains\n"));
    }

    #[test]
    fn command_help_shows_synopsis() {
        let text = help(Some("domstate")).expect("help");
        assert!(text.contains("    domstate <domain> [--reason]\n"), "{text}");
    }

    #[test]
    fn unknown_topic_is_an_error() {
        assert_eq!(
            help(Some("frobnicate")).expect_err("unknown").lines,
            ["command or command group 'frobnicate' doesn't exist"]
        );
    }
}
