//! storage XML: arrives with its daemon.
