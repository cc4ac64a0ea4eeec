//! Logging through `tracing`: filters from `RVIRT_LOG`, `--verbose` or the configuration's
//! `log_filters`, changeable at run time by the admin service and on SIGHUP.

use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The environment variable with tracing filter directives; it wins over every other setting.
pub const LOG_ENV: &str = "RVIRT_LOG";

/// The daemon's log filter, changeable while it runs.
#[derive(Debug)]
pub struct Logging {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    current: Mutex<String>,
    from_env: bool,
}

impl Logging {
    /// Installs the global subscriber, writing to standard error (which systemd sends to the
    /// journal). The filter is `RVIRT_LOG`, else `debug` with `--verbose`, else the
    /// configuration's `log_filters`, else `info`.
    pub fn init(verbose: bool, configured: &str) -> Logging {
        let env = std::env::var(LOG_ENV).ok().filter(|v| !v.trim().is_empty());
        let from_env = env.is_some();
        let wanted = env.unwrap_or_else(|| Self::default_filter(verbose, configured));
        let (filter, text) = match EnvFilter::try_new(&wanted) {
            Ok(filter) => (filter, wanted),
            Err(e) => {
                eprintln!("invalid log filter {wanted:?} ({e}); using \"info\"");
                (EnvFilter::new("info"), "info".to_owned())
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
        let filter =
            EnvFilter::try_new(filters).map_err(|e| format!("invalid log filter {filters:?}: {e}"))?;
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
