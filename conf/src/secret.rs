//! secret XML: arrives with its daemon.
