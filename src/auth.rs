//! API keys: how they are made, checked and hashed. Keys are random, so a
//! plain SHA-256 is enough to store them safely (no password stretching
//! needed); only the hash and a short display prefix are kept.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Who a request or socket acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Uuid,
    pub owner_id: Uuid,
    pub key_id: Uuid,
}

/// Prefix of every key meshgate issues, so leaked keys are recognisable.
pub const KEY_PREFIX: &str = "mgk_";

/// A new random key (256 bits).
pub fn generate_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// What is stored in place of a key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The first characters of a key, shown in listings to tell keys apart.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(12).collect()
}

/// Why a key header was refused before looking it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProblem {
    Missing,
    Invalid,
}

/// Checks the raw `X-Api-Key` header: present, non-empty, visible ASCII.
pub fn check_header(value: Option<&[u8]>) -> Result<&str, HeaderProblem> {
    let raw = value.ok_or(HeaderProblem::Missing)?;
    if raw.is_empty() || raw.len() > 256 || !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(HeaderProblem::Invalid);
    }
    std::str::from_utf8(raw).map_err(|_| HeaderProblem::Invalid)
}

/// A short-lived cache of key lookups, so a busy client or daemon fleet does
/// not cost a database round trip per request. Revocation takes effect
/// within the cache's lifetime (`MESHGATE_AUTH_CACHE_MS`, 5 s by default):
/// entries are never refreshed, only re-read once they are that old. Unknown
/// keys are remembered for one second at most, so a new key works at once
/// and a flood of bad keys does not reach PostgreSQL on every request.
pub struct AuthCache {
    ttl: std::time::Duration,
    entries: std::sync::Mutex<
        std::collections::HashMap<String, (Option<Principal>, std::time::Instant)>,
    >,
}

/// Entries kept at most; past it the cache starts over.
const AUTH_CACHE_MAX: usize = 50_000;

impl AuthCache {
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            ttl,
            entries: Default::default(),
        }
    }

    /// The principal of a live key, from the cache or PostgreSQL.
    pub async fn authenticate(
        &self,
        pool: &sqlx::PgPool,
        key: &str,
    ) -> crate::Result<Option<Principal>> {
        let hash = hash_key(key);
        let negative_ttl = self.ttl.min(std::time::Duration::from_secs(1));
        if let Some((found, at)) = self.lock().get(&hash).cloned() {
            let ttl = if found.is_some() {
                self.ttl
            } else {
                negative_ttl
            };
            if at.elapsed() < ttl {
                return Ok(found);
            }
        }
        let found = crate::db::accounts::authenticate(pool, key).await?;
        let mut entries = self.lock();
        if entries.len() >= AUTH_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (found, std::time::Instant::now()));
        Ok(found)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, (Option<Principal>, std::time::Instant)>,
    > {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_hash_stably() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(hash_key(&a), hash_key(&a));
        assert_ne!(hash_key(&a), hash_key(&b));
        assert_eq!(hash_key(&a).len(), 64);
    }

    #[test]
    fn header_must_be_visible_ascii() {
        assert_eq!(check_header(None), Err(HeaderProblem::Missing));
        assert_eq!(check_header(Some(b"")), Err(HeaderProblem::Invalid));
        assert_eq!(check_header(Some(b"a b")), Err(HeaderProblem::Invalid));
        assert_eq!(
            check_header(Some("clé".as_bytes())),
            Err(HeaderProblem::Invalid)
        );
        assert_eq!(check_header(Some(b"mgk_abc")), Ok("mgk_abc"));
    }
}
