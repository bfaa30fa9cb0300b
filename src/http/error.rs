//! HTTP error answers: always `{"code","message"}`, never internal text.

use poem_openapi::{payload::Json, ApiResponse, Object};

use crate::Error;

/// The body of every error answer.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// Stable, machine-readable code, e.g. `DAEMON_OFFLINE`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// Every error an operation can answer with.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is malformed.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing, invalid or revoked key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// No such resource for this owner.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The daemon is not connected, or the resource is in conflict.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// Something failed inside meshgate.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The daemon answered with an error (`DAEMON_ERROR`).
    #[oai(status = 502)]
    BadGateway(Json<ErrorBody>),
    /// A dependency (PostgreSQL, Redis) is unavailable, or the pod drains.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
    /// The daemon did not answer in time (`DAEMON_TIMEOUT`).
    #[oai(status = 504)]
    Timeout(Json<ErrorBody>),
}

fn body(code: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        code: code.to_owned(),
        message: message.into(),
    })
}

impl ApiError {
    pub fn unauthorized(code: &str, message: &str) -> Self {
        Self::Unauthorized(body(code, message))
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::BadRequest(body(code, message))
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::Conflict(body(code, message))
    }

    pub fn daemon_offline() -> Self {
        Self::conflict(
            "DAEMON_OFFLINE",
            "the daemon is not connected to any replica",
        )
    }

    pub fn daemon_error(message: impl Into<String>) -> Self {
        Self::BadGateway(body("DAEMON_ERROR", message))
    }

    pub fn daemon_timeout() -> Self {
        Self::Timeout(body("DAEMON_TIMEOUT", "the daemon did not answer in time"))
    }

    pub fn internal() -> Self {
        Self::Internal(body("INTERNAL", "internal error"))
    }

    pub fn not_found(what: &str) -> Self {
        Self::NotFound(body("NOT_FOUND", format!("{what} not found")))
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(what) => Self::not_found(what),
            Error::Invalid { code, message } => Self::BadRequest(body(code, message)),
            Error::DaemonOffline(_) => {
                Self::Conflict(body("DAEMON_OFFLINE", "the daemon is not connected"))
            }
            Error::DeliveryUnknown(_) => Self::Timeout(body(
                "DAEMON_TIMEOUT",
                "the command's delivery was not confirmed in time; it may or may not have reached the daemon",
            )),
            ref db if db.is_db_unavailable() => {
                tracing::error!(error = %e, "database unavailable");
                Self::Unavailable(body("DB_UNAVAILABLE", "the database is unavailable"))
            }
            Error::Redis(ref err) => {
                tracing::error!(error = %err, "redis failed");
                Self::Unavailable(body("REDIS_UNAVAILABLE", "shared state is unavailable"))
            }
            other => {
                tracing::error!(error = %other, "request failed");
                Self::Internal(body("INTERNAL", "internal error"))
            }
        }
    }
}
