//! The binary's `migrate` and `admin` commands, as operators run them.

use tokio::process::Command;

use crate::{client::open, harness::TestEnv};

async fn meshgate(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(args)
        .env("DATABASE_URL", &env.db_url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run meshgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked_from_the_command_line() {
    let env = TestEnv::new().await;
    // Migrations are idempotent (the harness already applied them).
    let (ok, stdout, _) = meshgate(&env, &["migrate"]).await;
    assert!(ok, "{stdout}");

    let (ok, stdout, stderr) = meshgate(
        &env,
        &[
            "admin",
            "create-key",
            "--email",
            "ops@example.invalid",
            "--owner-name",
            "Ops",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let key_id = lines
        .iter()
        .find_map(|l| l.strip_prefix("key id: "))
        .expect("a `key id:` line");
    let key = *lines.last().expect("the key on the last line");
    assert!(key.starts_with("mgk_") && !key.contains(' '), "{key}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE key_hash = $1")
        .bind(meshgate::auth::hash_key(key))
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1, "only the hash is stored");

    // A second key for the same user reuses the owner.
    let (_, second, _) = meshgate(
        &env,
        &["admin", "create-key", "--email", "ops@example.invalid"],
    )
    .await;
    let owners: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT default_owner_id) FROM users WHERE email = 'ops@example.invalid'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(owners, 1);

    let (ok, listing, _) = meshgate(
        &env,
        &["admin", "list-keys", "--email", "ops@example.invalid"],
    )
    .await;
    assert!(ok);
    assert_eq!(listing.lines().count(), 2, "{listing}");
    assert!(listing.contains(key_id));
    assert!(!listing.contains(key), "never the key itself");

    let pod = env.pod().await;
    assert!(open(pod.addr(), Some(key)).await.is_ok());
    let (ok, _, _) = meshgate(&env, &["admin", "revoke-key", key_id]).await;
    assert!(ok);
    // Refused once the pod's key cache (300 ms in tests) has let go of it.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let refusal = open(pod.addr(), Some(key))
        .await
        .expect_err("refused after revoke");
    assert_eq!(
        (refusal.status, refusal.body["code"].as_str()),
        (401, Some("AUTH_FAILED"))
    );
    let (_, listing, _) = meshgate(
        &env,
        &["admin", "list-keys", "--email", "ops@example.invalid"],
    )
    .await;
    assert!(
        listing
            .lines()
            .any(|l| l.contains(key_id) && !l.ends_with("revoked -")),
        "{listing}"
    );
    // The other key still works.
    assert!(open(pod.addr(), Some(second.lines().last().unwrap()))
        .await
        .is_ok());

    let (ok, _, stderr) = meshgate(
        &env,
        &["admin", "revoke-key", &uuid::Uuid::new_v4().to_string()],
    )
    .await;
    assert!(!ok, "unknown key id is an error");
    assert!(stderr.contains("no key"), "{stderr}");
}
