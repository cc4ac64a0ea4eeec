//! domain XML: arrives with its daemon.
