//! network XML: arrives with its daemon.
