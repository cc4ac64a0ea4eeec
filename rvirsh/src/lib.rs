//! `rvirsh`, the rvirt command line with virsh's command names, options and output layouts.
//!
//! - [`parse`]: command lines (quotes, `;`, options) as virsh reads them.
//! - [`format`]: virsh's tables and info blocks, each checked against virsh's text.
//! - [`commands`]: the command table and each command.
//! - [`shell`]: the connection and running commands; [`cli`]: arguments, batch and interactive
//!   modes.
//! - [`uri_default`]: which URI to open without `-c`.

pub mod cli;
pub mod commands;
pub mod devxml;
pub mod format;
pub mod help;
pub mod parse;
pub mod shell;
pub mod uri_default;
