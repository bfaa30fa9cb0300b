//! Contracts, files and checkpoints through the HTTP API.

use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine};
use serde_json::json;

use crate::{
    client::Daemon,
    harness::{eventually, Api, TestEnv},
};

#[tokio::test]
async fn contracts_are_created_and_read_by_their_owner_only() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let (owner, other) = (env.owner().await, env.owner().await);
    let api = Api::new(a.addr(), &owner.key);
    let (status, c) = api
        .post(
            "/api/v1/mesh/contracts",
            json!({"name": "c1", "description": "d", "contractType": "specification", "phase": "execute",
                   "localOnly": false, "repositories": [{"repositoryUrl": "https://example.invalid/r.git"}]}),
        )
        .await;
    assert_eq!(status, 201, "{c}");
    let id = c["id"].as_str().unwrap().to_owned();
    let (status, got) = Api::new(b.addr(), &owner.key)
        .get(&format!("/api/v1/mesh/contracts/{id}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["phase"], "execute");
    assert_eq!(got["contractType"], "specification");
    assert_eq!(got["completedDeliverables"], json!({}));
    assert_eq!(
        got["repositories"][0]["repositoryUrl"],
        "https://example.invalid/r.git"
    );
    assert_eq!(
        Api::new(b.addr(), &other.key)
            .get(&format!("/api/v1/mesh/contracts/{id}"))
            .await
            .0,
        404
    );

    let (status, err) = api
        .post("/api/v1/mesh/contracts", json!({"name": "c", "contractType": "weird", "phase": "p", "localOnly": true, "repositories": []}))
        .await;
    assert_eq!((status, err["code"].as_str()), (400, Some("BAD_REQUEST")));

    // A task may belong to the contract, but not to another owner's.
    let (status, _) = api
        .post(
            "/api/v1/mesh/tasks",
            json!({"name": "t", "plan": "p", "contractId": id}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = Api::new(a.addr(), &other.key)
        .post(
            "/api/v1/mesh/tasks",
            json!({"name": "t", "plan": "p", "contractId": id}),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_file_is_synced_by_the_daemon_of_a_task_on_another_replica() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let (owner, other) = (env.owner().await, env.owner().await);
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    let api = Api::new(b.addr(), &owner.key);

    let (status, file) = api
        .post(
            "/api/v1/mesh/files",
            json!({"name": "Spec", "repoFilePath": "docs/SPEC.md"}),
        )
        .await;
    assert_eq!(status, 201, "{file}");
    assert_eq!(file["repoSyncStatus"], "none");
    assert_eq!(file["body"], json!([]));
    let id = file["id"].as_str().unwrap().to_owned();

    let (status, _) = api
        .post(
            &format!("/api/v1/mesh/files/{id}/sync"),
            json!({"taskId": task}),
        )
        .await;
    assert_eq!(status, 202);
    let cmd = d.recv().await;
    assert_eq!(
        cmd,
        json!({"type": "readRepoFile", "requestId": id, "filePath": "docs/SPEC.md"})
    );
    assert_eq!(
        api.get(&format!("/api/v1/mesh/files/{id}")).await.1["repoSyncStatus"],
        "pending"
    );

    d.send(json!({"type": "repoFileContent", "requestId": id, "filePath": "docs/SPEC.md", "success": true,
                  "content": "# Title\n\nSome text.\n"}))
        .await;
    let synced = eventually(Duration::from_secs(5), "file synced", || async {
        let (_, f) = api.get(&format!("/api/v1/mesh/files/{id}")).await;
        (f["repoSyncStatus"] == "synced").then_some(f)
    })
    .await;
    assert_eq!(synced["body"][0]["type"], "heading");
    assert_eq!(synced["body"][0]["text"], "Title");
    assert!(synced["repoSyncedAt"].is_string());
    assert!(synced["version"].as_i64().unwrap() > 1);

    let others = Api::new(b.addr(), &other.key);
    assert_eq!(others.get(&format!("/api/v1/mesh/files/{id}")).await.0, 404);
    assert_eq!(
        others
            .post(
                &format!("/api/v1/mesh/files/{id}/sync"),
                json!({"taskId": task})
            )
            .await
            .0,
        404
    );
    let idle = env.task(owner.owner_id, "done", None).await;
    let (status, body) = api
        .post(
            &format!("/api/v1/mesh/files/{id}/sync"),
            json!({"taskId": idle}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("DAEMON_OFFLINE"))
    );
}

#[tokio::test]
async fn checkpoints_are_listed_with_whether_a_patch_is_kept() {
    let env = TestEnv::new().await;
    let a = env.pod().await;
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    let patch = STANDARD.encode([0x1f, 0x8b, 0x08, 0x00]);
    d.send(json!({"type": "checkpointCreated", "taskId": task, "success": true, "commitSha": "abc", "branchName": "b",
                  "message": "first", "linesAdded": 3, "patchData": patch, "patchBaseSha": "base", "patchFilesCount": 1}))
        .await;
    d.send(json!({"type": "checkpointCreated", "taskId": task, "success": true, "commitSha": "def", "branchName": "b",
                  "message": "second"}))
        .await;
    let api = Api::new(a.addr(), &owner.key);
    let list = eventually(Duration::from_secs(5), "two checkpoints", || async {
        let (_, l) = api
            .get(&format!("/api/v1/mesh/tasks/{task}/checkpoints"))
            .await;
        (l.as_array().map(Vec::len) == Some(2)).then_some(l)
    })
    .await;
    assert_eq!(list[0]["checkpointNumber"], 1);
    assert_eq!(list[0]["hasPatch"], true);
    assert_eq!(list[0]["linesAdded"], 3);
    assert_eq!(list[1]["checkpointNumber"], 2);
    assert_eq!(list[1]["hasPatch"], false);
    let stranger = env.owner().await;
    let (status, _) = Api::new(a.addr(), &stranger.key)
        .get(&format!("/api/v1/mesh/tasks/{task}/checkpoints"))
        .await;
    assert_eq!(status, 404);
}
