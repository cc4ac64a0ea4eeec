//! Logging through `tracing`: filters from `RVIRT_LOG`, `--verbose` or the configuration's
//! `log_filters`, changeable at run time by the admin service and on SIGHUP.
//!
//! A filter is a comma-separated list of `level` (the default) and `target=level` directives
//! (`info,rvirt_daemon=debug,h2=warn`): `tracing_subscriber`'s `Targets`, which parses them by
//! hand. Its `EnvFilter` would also take span and field directives, but it compiles regular
//! expressions at start, which cost every daemon about a megabyte of memory for a feature
//! nobody used.

use std::sync::Mutex;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Registry, reload};

/// The environment variable with tracing filter directives; it wins over every other setting.
pub const LOG_ENV: &str = "RVIRT_LOG";

/// The daemon's log filter, changeable while it runs.
#[derive(Debug)]
pub struct Logging {
    handle: Option<reload::Handle<Targets, Registry>>,
    current: Mutex<String>,
    from_env: bool,
}

/// Parses filter directives; an empty list is `info`.
fn parse(filters: &str) -> Result<Targets, String> {
    let filters = filters.trim();
    if filters.is_empty() {
        return Ok(Targets::new().with_default(tracing::Level::INFO));
    }
    filters.parse::<Targets>().map_err(|e| {
        format!("invalid log filter {filters:?}: {e} (use level or target=level, comma-separated)")
    })
}

impl Logging {
    /// Installs the global subscriber, writing to standard error (which systemd sends to the
    /// journal). The filter is `RVIRT_LOG`, else `debug` with `--verbose`, else the
    /// configuration's `log_filters`, else `info`.
    pub fn init(verbose: bool, configured: &str) -> Logging {
        let env = std::env::var(LOG_ENV).ok().filter(|v| !v.trim().is_empty());
        let from_env = env.is_some();
        let wanted = env.unwrap_or_else(|| Self::default_filter(verbose, configured));
        let (filter, text) = match parse(&wanted) {
            Ok(filter) => (filter, wanted),
            Err(e) => {
                eprintln!("{e}; using \"info\"");
                (
                    Targets::new().with_default(tracing::Level::INFO),
                    "info".to_owned(),
                )
            }
        };
        let (layer, handle) = reload::Layer::new(filter);
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        let installed = tracing_subscriber::registry()
            .with(layer)
            .with(fmt)
            .try_init()
            .is_ok();
        Logging {
            handle: installed.then_some(handle),
            current: Mutex::new(text),
            from_env,
        }
    }

    fn default_filter(verbose: bool, configured: &str) -> String {
        if verbose {
            "debug".to_owned()
        } else if configured.trim().is_empty() {
            "info".to_owned()
        } else {
            configured.trim().to_owned()
        }
    }

    /// The filter in force.
    pub fn filters(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Replaces the filter; an invalid one is refused with the parser's explanation and the old
    /// one stays.
    pub fn set_filters(&self, filters: &str) -> Result<(), String> {
        let filters = if filters.trim().is_empty() {
            "info"
        } else {
            filters.trim()
        };
        let filter = parse(filters)?;
        if let Some(handle) = &self.handle {
            handle
                .reload(filter)
                .map_err(|e| format!("cannot change the log filter: {e}"))?;
        }
        if let Ok(mut current) = self.current.lock() {
            *current = filters.to_owned();
        }
        tracing::info!(filters, "log filters changed");
        Ok(())
    }

    /// Applies the configuration's `log_filters` after a reload, unless `RVIRT_LOG` was given.
    pub fn reload_from_config(&self, verbose: bool, configured: &str) -> Result<(), String> {
        if self.from_env {
            return Ok(());
        }
        self.set_filters(&Self::default_filter(verbose, configured))
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing::level_filters::LevelFilter;

    use super::parse;

    #[test]
    fn directives_set_a_default_and_per_target_levels() {
        let filter = parse("warn,rvirt_daemon=debug").expect("parse");
        assert!(filter.would_enable("rvirt_daemon::server", &Level::DEBUG));
        assert!(!filter.would_enable("h2::codec", &Level::INFO));
        assert!(filter.would_enable("h2::codec", &Level::WARN));
        assert_eq!(parse("").expect("empty").default_level(), Some(LevelFilter::INFO));
        assert_eq!(
            parse("trace").expect("trace").default_level(),
            Some(LevelFilter::TRACE)
        );
    }

    #[test]
    fn a_bad_directive_is_refused_with_the_syntax() {
        let err = parse("rvirt_daemon=loud").expect_err("bad level");
        assert!(err.contains("rvirt_daemon=loud"), "{err}");
        assert!(err.contains("target=level"), "{err}");
    }
}
