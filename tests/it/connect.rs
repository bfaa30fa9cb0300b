//! The daemon socket: upgrade refusals, registration, stable identity, and
//! the daemon listing on every replica.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    client::{open, Daemon},
    harness::{eventually, TestEnv},
};

#[tokio::test]
async fn upgrade_is_refused_without_a_valid_key() {
    let env = TestEnv::new().await;
    let pod = env.pod().await;
    let owner = env.owner().await;
    let revoked = env.owner().await;
    meshgate::db::accounts::revoke_key(&env.pool, revoked.key_id)
        .await
        .unwrap();

    let cases: [(Option<&str>, u16, &str); 4] = [
        (None, 401, "MISSING_API_KEY"),
        (Some(""), 401, "INVALID_API_KEY"),
        (Some("mgk_not-a-key-we-know"), 401, "AUTH_FAILED"),
        (Some(&revoked.key), 401, "AUTH_FAILED"),
    ];
    for (key, status, code) in cases {
        let refusal = open(pod.addr(), key).await.expect_err("refused");
        assert_eq!(refusal.status, status, "key {key:?}");
        assert_eq!(refusal.body["code"], code, "key {key:?}: {}", refusal.body);
        assert!(refusal.body["message"].is_string());
    }
    assert!(open(pod.addr(), Some(&owner.key)).await.is_ok());
    pod.shutdown().await;
}

#[tokio::test]
async fn upgrade_answers_503_when_the_database_is_unreachable() {
    let env = TestEnv::new().await;
    // Nothing listens on port 1: every database call fails to connect.
    let pod = env
        .pod_with(&["--database-url=postgres://postgres@127.0.0.1:1/none"])
        .await;
    let refusal = open(pod.addr(), Some("mgk_whatever"))
        .await
        .expect_err("refused");
    assert_eq!(refusal.status, 503);
    assert_eq!(refusal.body["code"], "DB_UNAVAILABLE");
    pod.shutdown().await;
}

#[tokio::test]
async fn messages_before_authenticate_are_refused_and_bad_frames_do_not_close_the_socket() {
    let env = TestEnv::new().await;
    let pod = env.pod().await;
    let owner = env.owner().await;
    let mut d = Daemon {
        ws: open(pod.addr(), Some(&owner.key)).await.unwrap(),
        id: None,
    };

    d.send(json!({"type": "heartbeat", "activeTasks": []}))
        .await;
    let reply = d.recv().await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "NOT_REGISTERED");

    for bad in [
        "not json",
        "{\"type\":\"noSuchMessage\"}",
        "{\"type\":\"heartbeat\"}",
        "[1,2]",
    ] {
        d.send_text(bad.into()).await;
        let reply = d.recv().await;
        assert_eq!(reply["type"], "error", "for {bad}");
        assert_eq!(reply["code"], "PARSE_ERROR", "for {bad}");
    }

    // A name PostgreSQL cannot store is refused before it reaches it.
    d.send(json!({
        "type": "authenticate", "apiKey": owner.key, "machineId": "m\u{0}1",
        "hostname": "h", "maxConcurrentTasks": 2
    }))
    .await;
    let reply = d.recv().await;
    assert_eq!(reply["code"], "PARSE_ERROR", "{reply}");

    // Still open: registration works after all that.
    let id = d.authenticate(&owner.key, "machine-1").await;
    d.send(json!({
        "type": "daemonDirectories", "workingDirectory": "/w\u{0}",
        "homeDirectory": "/h", "worktreesDirectory": "/t"
    }))
    .await;
    assert_eq!(d.recv().await["code"], "PARSE_ERROR");

    // And after registration too.
    d.send_text("{oops".into()).await;
    assert_eq!(d.recv().await["code"], "PARSE_ERROR");
    d.send(json!({"type": "heartbeat", "activeTasks": []}))
        .await;
    assert!(
        d.try_recv(Duration::from_millis(300)).await.is_none(),
        "heartbeat has no answer"
    );

    let row: (String, i32) =
        sqlx::query_as("SELECT hostname, max_concurrent_tasks FROM daemons WHERE id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(row, ("host-machine-1".into(), 2));
    pod.shutdown().await;
}

#[tokio::test]
async fn daemon_id_is_stable_per_owner_and_machine() {
    let env = TestEnv::new().await;
    let pod = env.pod().await;
    let (alice, bob) = (env.owner().await, env.owner().await);

    let first = Daemon::connect(pod.addr(), &alice.key, "m1").await.id();
    let other_machine = Daemon::connect(pod.addr(), &alice.key, "m2").await.id();
    let again = Daemon::connect(pod.addr(), &alice.key, "m1").await.id();
    let other_owner = Daemon::connect(pod.addr(), &bob.key, "m1").await.id();

    assert_eq!(first, again);
    assert_ne!(first, other_machine);
    assert_ne!(first, other_owner);
    pod.shutdown().await;
}

#[tokio::test]
async fn key_use_is_recorded_without_delaying_the_upgrade() {
    let env = TestEnv::new().await;
    let pod = env.pod().await;
    let owner = env.owner().await;
    let _d = Daemon::connect(pod.addr(), &owner.key, "m1").await;
    eventually(Duration::from_secs(5), "last_used_at set", || async {
        let used: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT last_used_at FROM api_keys WHERE id = $1")
                .bind(owner.key_id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        used
    })
    .await;
    pod.shutdown().await;
}

async fn get_json(addr: std::net::SocketAddr, path: &str, key: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_replica_lists_the_same_daemons_for_their_owner_only() {
    let env = TestEnv::new().await;
    let pods = [env.pod().await, env.pod().await, env.pod().await];
    let (alice, bob) = (env.owner().await, env.owner().await);
    let mut d = Daemon::connect(pods[0].addr(), &alice.key, "m1").await;
    let _bobs = Daemon::connect(pods[1].addr(), &bob.key, "m9").await;
    d.send(json!({"type": "daemonDirectories", "workingDirectory": "/w", "homeDirectory": "/h", "worktreesDirectory": "/t"}))
        .await;
    let task = Uuid::new_v4();
    d.send(json!({"type": "heartbeat", "activeTasks": [task]}))
        .await;

    for pod in &pods {
        let (status, list) = eventually(Duration::from_secs(5), "heartbeat visible", || async {
            let (s, l) = get_json(pod.addr(), "/api/v1/mesh/daemons", &alice.key).await;
            (l[0]["activeTaskIds"][0] == json!(task)).then_some((s, l))
        })
        .await;
        assert_eq!(status, 200);
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 1, "only alice's daemon: {list:?}");
        assert_eq!(list[0]["id"], json!(d.id()));
        assert_eq!(list[0]["machineId"], "m1");
        assert_eq!(list[0]["hostname"], "host-m1");
        assert_eq!(list[0]["maxConcurrentTasks"], 2);
        assert_eq!(list[0]["worktreesDirectory"], "/t");
        assert!(list[0]["lastHeartbeatAt"].is_string());

        let (status, one) = get_json(
            pod.addr(),
            &format!("/api/v1/mesh/daemons/{}", d.id()),
            &alice.key,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(one["id"], json!(d.id()));
        // Another owner's daemon id is answered as if it did not exist.
        let (status, body) = get_json(
            pod.addr(),
            &format!("/api/v1/mesh/daemons/{}", d.id()),
            &bob.key,
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(body["code"], "NOT_FOUND");
    }
    let (status, _) = get_json(pods[2].addr(), "/api/v1/mesh/daemons", "mgk_unknown").await;
    assert_eq!(status, 401);

    // Gone from every replica once it disconnects.
    drop(d);
    for pod in &pods {
        eventually(Duration::from_secs(5), "daemon unlisted", || async {
            let (_, l) = get_json(pod.addr(), "/api/v1/mesh/daemons", &alice.key).await;
            l.as_array().is_some_and(|a| a.is_empty()).then_some(())
        })
        .await;
    }
    for pod in pods {
        pod.shutdown().await;
    }
}
