//! Daemon sockets: the loop that reads frames ([`socket`]), the session that
//! decodes and dispatches them ([`session`]), and one function per message
//! kind, grouped by concern ([`presence`], …). The sockets themselves are the
//! only state a pod owns ([`connections`]); [`leases`] keeps their registry
//! entries alive.

pub mod connections;
pub mod files;
pub mod git;
pub mod keys;
pub mod leases;
pub mod lifecycle;
pub mod outbox;
pub mod output;
pub mod presence;
pub mod reconcile;
pub mod replies;
pub mod session;
pub mod socket;
pub mod supervisor;
