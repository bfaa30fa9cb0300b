//! `repoFileContent`: a repository file read by a daemon on one pod becomes
//! the file's body, announced to the owner's clients on any pod; a failed
//! read marks the file failed; another owner's daemon changes nothing.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    client::Daemon,
    git_results::{handled, two_owners},
    harness::TestEnv,
    tap::Tap,
};

#[derive(Debug, sqlx::FromRow)]
struct FileRow {
    body: Value,
    repo_sync_status: String,
    synced: bool,
    version: i32,
}

async fn file_row(env: &TestEnv, id: Uuid) -> FileRow {
    sqlx::query_as(
        "SELECT body, repo_sync_status, repo_synced_at IS NOT NULL AS synced, version
         FROM files WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn new_file(env: &TestEnv, owner: Uuid) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO files (owner_id, name, repo_file_path, repo_sync_status)
         VALUES ($1, 'plan', 'docs/plan.md', 'pending') RETURNING id",
    )
    .bind(owner)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn repo_file_content_becomes_the_files_body_and_is_announced_to_the_owner() {
    let env = TestEnv::new().await;
    let (a, _b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let file = new_file(&env, owner.owner_id).await;
    let mut tap = Tap::owner(&env, owner.owner_id).await;

    let markdown = "# Plan ✓\n\nShip **it** — 今日.\n\n1. parse\n2. store\n   - rows\n\n\
                    ```rust\nfn main() {}\n```\n";
    d.send(
        json!({"type": "repoFileContent", "requestId": file, "filePath": "docs/plan.md",
               "content": markdown, "success": true}),
    )
    .await;

    let e = tap.next_of(owner.owner_id, "fileUpdated").await;
    assert_eq!(e["fileId"], json!(file));
    assert_eq!(e["version"], 2);
    assert_eq!(
        e["updatedFields"],
        json!(["body", "repo_sync_status", "repo_synced_at"])
    );
    assert_eq!(e["updatedBy"], "daemon");
    let row = file_row(&env, file).await;
    assert_eq!(
        row.body,
        json!([
            {"type": "heading", "level": 1, "text": "Plan ✓"},
            {"type": "paragraph", "text": "Ship it — 今日."},
            {"type": "list", "ordered": true, "items": ["parse", "store\n  - rows"]},
            {"type": "code", "language": "rust", "text": "fn main() {}"},
        ])
    );
    assert_eq!(row.repo_sync_status, "synced");
    assert!(row.synced);
    assert_eq!(row.version, 2);
    handled(&mut d).await;
}

#[tokio::test]
async fn failed_repo_file_read_marks_the_file_failed_and_keeps_its_body() {
    let env = TestEnv::new().await;
    let (a, _b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let file = new_file(&env, owner.owner_id).await;
    let mut tap = Tap::owner(&env, owner.owner_id).await;

    d.send(
        json!({"type": "repoFileContent", "requestId": file, "filePath": "docs/plan.md",
               "success": false, "error": "no such file"}),
    )
    .await;
    let e = tap.next_of(owner.owner_id, "fileUpdated").await;
    assert_eq!(e["fileId"], json!(file));
    assert_eq!(e["updatedFields"], json!(["repo_sync_status"]));
    let row = file_row(&env, file).await;
    assert_eq!(row.repo_sync_status, "failed");
    assert_eq!(row.body, json!([]));
    assert!(!row.synced);
    assert_eq!(row.version, 2);

    d.send(
        json!({"type": "repoFileContent", "requestId": Uuid::new_v4(),
               "filePath": "x.md", "content": "# x", "success": true}),
    )
    .await;
    let reply = d.recv().await;
    assert_eq!(reply["code"], "FILE_NOT_FOUND", "an unknown file: {reply}");
    assert!(tap
        .try_next(owner.owner_id, Duration::from_millis(300))
        .await
        .is_none());
}

#[tokio::test]
async fn repo_file_content_for_another_owners_file_is_refused_and_changes_nothing() {
    let world = two_owners().await;
    let file = world.alice_file;
    let content = json!({"type": "repoFileContent", "requestId": file,
                         "filePath": "docs/plan.md", "content": "# forged", "success": true});
    world.refused(content, "FILE_NOT_FOUND").await;

    let world = two_owners().await;
    let failed = json!({"type": "repoFileContent", "requestId": world.alice_file,
                        "filePath": "docs/plan.md", "success": false, "error": "x"});
    world.refused(failed, "FILE_NOT_FOUND").await;
}
