//! `X-Api-Key` authentication for REST operations.

use poem::Request;
use poem_openapi::{auth::ApiKey, SecurityScheme};

use super::error::ApiError;
use crate::{auth::Principal, state::AppState};

/// A user API key (`admin create-key`). Every row a request sees belongs to
/// the key's owner.
#[derive(SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "X-Api-Key",
    key_in = "header",
    checker = "check_key"
)]
pub struct UserKey(pub Principal);

async fn check_key(req: &Request, key: ApiKey) -> poem::Result<Principal> {
    let state = req.data::<AppState>().ok_or_else(|| {
        poem::Error::from_string(
            "state missing",
            poem::http::StatusCode::INTERNAL_SERVER_ERROR,
        )
    })?;
    if crate::auth::check_header(Some(key.key.as_bytes())).is_err() {
        return Err(ApiError::unauthorized(
            "INVALID_API_KEY",
            "the X-Api-Key header is not a valid key",
        )
        .into());
    }
    match state.auth.authenticate(&state.db, &key.key).await {
        Ok(Some(principal)) => {
            state.key_usage.record(principal.key_id);
            Ok(principal)
        }
        Ok(None) => Err(ApiError::unauthorized("AUTH_FAILED", "unknown or revoked API key").into()),
        Err(e) => Err(ApiError::from(e).into()),
    }
}
