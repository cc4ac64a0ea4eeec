//! Command lines as virsh reads them: words split on blanks with single quotes, double quotes
//! and backslash escapes, `;` between commands, `#` starting a comment; then each command's
//! words matched against its option table (`--name value`, `--name=value`, boolean flags, and
//! positional words filling the data options in order).

use std::collections::BTreeMap;

/// One option of a command, as virsh's `vshCmdOptDef`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opt {
    /// The name, used as `--name`.
    pub name: &'static str,
    /// What it takes.
    pub kind: Kind,
    /// One line of help.
    pub help: &'static str,
}

/// What an option takes (virsh's `VSH_OT_*` with the `VSH_OFLAG_*` that matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A flag.
    Bool,
    /// A required value, also given as the next positional word.
    Data,
    /// An optional value, also given as the next positional word.
    String,
    /// An optional number, also given as the next positional word.
    Int,
    /// An optional value given only as `--name value`.
    NamedOnly,
    /// A required value given only as `--name value`.
    RequiredNamed,
}

impl Opt {
    /// A flag.
    pub const fn flag(name: &'static str, help: &'static str) -> Opt {
        Opt {
            name,
            kind: Kind::Bool,
            help,
        }
    }

    /// A required positional value.
    pub const fn data(name: &'static str, help: &'static str) -> Opt {
        Opt {
            name,
            kind: Kind::Data,
            help,
        }
    }

    /// An optional value that may also be positional.
    pub const fn string(name: &'static str, help: &'static str) -> Opt {
        Opt {
            name,
            kind: Kind::String,
            help,
        }
    }

    /// An optional number that may also be positional.
    pub const fn int(name: &'static str, help: &'static str) -> Opt {
        Opt {
            name,
            kind: Kind::Int,
            help,
        }
    }

    /// An optional value given only by name.
    pub const fn named(name: &'static str, help: &'static str) -> Opt {
        Opt {
            name,
            kind: Kind::NamedOnly,
            help,
        }
    }

    fn positional(&self) -> bool {
        matches!(self.kind, Kind::Data | Kind::String | Kind::Int)
    }

    fn required(&self) -> bool {
        matches!(self.kind, Kind::Data | Kind::RequiredNamed)
    }
}

/// The options a command line gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    values: BTreeMap<&'static str, String>,
    flags: Vec<&'static str>,
}

impl Args {
    /// Whether a flag was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    /// An option's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A required option's value (the parser checked it is there).
    pub fn req(&self, name: &str) -> &str {
        self.get(name).unwrap_or_default()
    }

    /// Whether the option was given at all (flag or value).
    pub fn has(&self, name: &str) -> bool {
        self.flag(name) || self.values.contains_key(name)
    }
}

/// Splits one line into commands, each a list of words. Errors are virsh's messages.
pub fn split_line(line: &str) -> Result<Vec<Vec<String>>, String> {
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars
            .peek()
            .is_some_and(|c| *c == ' ' || *c == '\t' || *c == '\n' || *c == '\r')
        {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        if c == '#' {
            break;
        }
        if c == ';' {
            chars.next();
            if !words.is_empty() {
                commands.push(std::mem::take(&mut words));
            }
            continue;
        }
        let mut word = String::new();
        let (mut single, mut double) = (false, false);
        while let Some(&c) = chars.peek() {
            if !single && !double && (c == ' ' || c == '\t' || c == ';' || c == '\n' || c == '\r') {
                break;
            }
            chars.next();
            match c {
                '\'' if !double => single = !single,
                '"' if !single => double = !double,
                '\\' if !single => match chars.next() {
                    Some(escaped) => word.push(escaped),
                    None => return Err("dangling \\".into()),
                },
                other => word.push(other),
            }
        }
        if double {
            return Err("missing \"".into());
        }
        words.push(word);
    }
    if !words.is_empty() {
        commands.push(words);
    }
    Ok(commands)
}

/// Matches a command's words (after its name) against its options, as virsh does.
pub fn parse_args(command: &str, opts: &'static [Opt], words: &[String]) -> Result<Args, String> {
    let mut args = Args::default();
    let mut seen: Vec<&'static str> = Vec::new();
    let mut data_only = false;
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        i += 1;
        if !data_only && word == "--" {
            data_only = true;
            continue;
        }
        if !data_only && word.len() > 2 && word.starts_with("--") {
            let body = &word[2..];
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (body, None),
            };
            let Some(opt) = opts.iter().find(|o| o.name == name) else {
                return Err(format!("command '{command}' doesn't support option --{name}"));
            };
            if seen.contains(&opt.name) {
                return Err(format!("option --{} already seen", opt.name));
            }
            seen.push(opt.name);
            if opt.kind == Kind::Bool {
                if inline.is_some() {
                    return Err(format!("invalid '=' after option --{}", opt.name));
                }
                args.flags.push(opt.name);
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None if i < words.len() => {
                    i += 1;
                    words[i - 1].clone()
                }
                None => {
                    let what = if opt.kind == Kind::Int { "number" } else { "string" };
                    return Err(format!("expected syntax: --{} <{what}>", opt.name));
                }
            };
            args.values.insert(opt.name, value);
            continue;
        }
        let Some(opt) = opts.iter().find(|o| o.positional() && !seen.contains(&o.name)) else {
            return Err(format!("unexpected data '{word}'"));
        };
        seen.push(opt.name);
        args.values.insert(opt.name, word.clone());
    }
    for opt in opts {
        if opt.required() && !seen.contains(&opt.name) {
            return Err(if opt.kind == Kind::Data {
                format!("command '{command}' requires <{}> option", opt.name)
            } else {
                format!("command '{command}' requires --{} option", opt.name)
            });
        }
    }
    for opt in opts.iter().filter(|o| o.kind == Kind::Int) {
        if let Some(v) = args.get(opt.name)
            && v.parse::<i64>().is_err()
        {
            return Err(format!(
                "Numeric value '{v}' for <{}> option is malformed or out of range",
                opt.name
            ));
        }
    }
    Ok(args)
}

/// A size as virsh reads `setmem 1G` or `vol-resize 10M`: digits and an optional unit suffix
/// (`b`, `k`/`KiB`, `KB`, `M`/`MiB`, `MB`, ... ), with `default_unit` bytes per unit when none
/// is given. Returns bytes.
pub fn scaled_size(text: &str, default_unit: u64) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let scale: u64 = match suffix {
        "" => default_unit,
        "b" | "B" | "byte" | "bytes" => 1,
        "KB" => 1000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "m" | "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "g" | "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "t" | "T" | "TiB" => 1 << 40,
        "PB" => 1_000_000_000_000_000,
        "p" | "P" | "PiB" => 1 << 50,
        "EB" => 1_000_000_000_000_000_000,
        "e" | "E" | "EiB" => 1 << 60,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<Vec<String>> {
        split_line(line).expect("split")
    }

    #[test]
    fn quotes_and_escapes_follow_virsh() {
        assert_eq!(
            words(r#"define 'a b' "c \"d\"" e\ f 'g\h'"#),
            vec![vec!["define", "a b", "c \"d\"", "e f", "g\\h"]]
        );
    }

    #[test]
    fn semicolons_separate_commands_and_hash_comments() {
        assert_eq!(
            words("start x; domstate x # comment"),
            vec![vec!["start", "x"], vec!["domstate", "x"]]
        );
        assert_eq!(words("  # only a comment"), Vec::<Vec<String>>::new());
    }

    #[test]
    fn unbalanced_quotes_and_dangling_backslash_are_errors() {
        assert_eq!(split_line("echo \"a").expect_err("quote"), "missing \"");
        assert_eq!(split_line("echo a\\").expect_err("backslash"), "dangling \\");
        // As in virsh, an open single quote runs to the end of the line.
        assert_eq!(words("echo 'a b"), vec![vec!["echo", "a b"]]);
    }

    const OPTS: &[Opt] = &[
        Opt::data("domain", "d"),
        Opt::string("pool", "p"),
        Opt::flag("all", "a"),
        Opt::int("timeout", "t"),
    ];

    fn parse(line: &str) -> Result<Args, String> {
        let w: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        parse_args("cmd", OPTS, &w)
    }

    #[test]
    fn positional_words_fill_data_options_in_order() {
        let a = parse("vm1 p1 --all").expect("parse");
        assert_eq!(
            (a.get("domain"), a.get("pool"), a.flag("all")),
            (Some("vm1"), Some("p1"), true)
        );
        let a = parse("--pool=p2 --domain vm2").expect("parse");
        assert_eq!((a.get("domain"), a.get("pool")), (Some("vm2"), Some("p2")));
    }

    #[test]
    fn option_errors_use_virshs_messages() {
        assert_eq!(
            parse("").expect_err("missing"),
            "command 'cmd' requires <domain> option"
        );
        assert_eq!(
            parse("x --bogus").expect_err("bogus"),
            "command 'cmd' doesn't support option --bogus"
        );
        assert_eq!(parse("x y 5 z").expect_err("extra"), "unexpected data 'z'");
        assert_eq!(
            parse("x --all=1").expect_err("bool"),
            "invalid '=' after option --all"
        );
        assert_eq!(
            parse("x --timeout").expect_err("value"),
            "expected syntax: --timeout <number>"
        );
        assert!(parse("x --timeout soon").expect_err("int").contains("malformed"));
        assert_eq!(
            parse("x --all --all").expect_err("twice"),
            "option --all already seen"
        );
    }

    #[test]
    fn double_dash_makes_the_rest_data() {
        let a = parse("-- --weird").expect("parse");
        assert_eq!(a.get("domain"), Some("--weird"));
    }

    #[test]
    fn scaled_sizes_take_units() {
        assert_eq!(scaled_size("1024", 1024), Some(1 << 20));
        assert_eq!(scaled_size("1G", 1024), Some(1 << 30));
        assert_eq!(scaled_size("5MB", 1), Some(5_000_000));
        assert_eq!(scaled_size("3x", 1), None);
        assert_eq!(scaled_size("", 1), None);
    }
}
