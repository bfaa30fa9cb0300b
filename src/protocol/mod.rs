//! Wire protocol types shared by every part of meshgate.
//!
//! These modules describe the JSON frames of `PROTOCOL.md` and nothing else:
//! no I/O, no state. They are the single place where the shape of a frame is
//! written down in Rust.
//!
//! - [`daemon`]: messages a daemon sends ([`daemon::DaemonMessage`], §1.1) and
//!   commands the server sends it ([`daemon::DaemonCommand`], §1.2).
//! - [`claude`]: parsing one line of Claude Code stream-json task output into
//!   an [`claude::OutputEvent`] (§1.3).
//! - [`client`]: events pushed to web clients and the requests they send (§2).

pub mod claude;
pub mod client;
pub mod daemon;
