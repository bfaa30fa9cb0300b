//! The crate's one error type. Internal causes are logged where they are
//! turned into an answer (see `http::error`), never shown to a client.

use uuid::Uuid;

/// Anything that can go wrong inside meshgate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL failed or is unreachable.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A batched write failed; every caller of the batch holds this one error.
    #[error("database error: {0}")]
    DbShared(std::sync::Arc<sqlx::Error>),
    /// Migrations could not be applied.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Redis failed or is unreachable.
    #[error("redis error: {0}")]
    Redis(#[from] fred::error::Error),
    /// No replica holds a connection of this daemon.
    #[error("daemon {0} is not connected")]
    DaemonOffline(Uuid),
    /// A command was routed to the pod holding the daemon, but that pod's
    /// receipt did not come in time: it may or may not have been delivered.
    #[error("delivery to daemon {0} was not confirmed")]
    DeliveryUnknown(Uuid),
    /// The row does not exist for this owner (or at all: callers cannot tell).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller sent something that cannot be accepted.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The listener or another OS resource failed.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    /// Something that should not happen; the text is for logs only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A client mistake with a stable code.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            message: message.into(),
        }
    }

    /// True when PostgreSQL itself could not be reached (as opposed to a
    /// query being wrong), so callers can answer 503 rather than 500.
    pub fn is_db_unavailable(&self) -> bool {
        match self {
            Error::Db(e) => sqlx_unavailable(e),
            Error::DbShared(e) => sqlx_unavailable(e),
            _ => false,
        }
    }
}

/// True when a sqlx error means PostgreSQL could not be reached.
pub fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
