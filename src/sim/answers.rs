//! What a simulated daemon answers to each command of PROTOCOL.md §1.2 that
//! expects an answer (all but `spawnTask`, `interruptTask`, `sendMessage`,
//! `applyPatchToWorktree` and `reconnect`, which the daemon loop handles).
//!
//! Diffs come from a real repository when the simulator is pointed at one
//! (`--repo`): [`RepoSnapshot`] reads `git diff HEAD` once at start (or the
//! last commit's patch when the tree is clean). Otherwise a small diff is
//! generated per task. Checkpoint patches are gzip + base64, as real daemons
//! send them.

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Component, Path, PathBuf},
    process::Command,
};

use base64::Engine as _;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::protocol::daemon::DaemonCommand;

/// A repository's diff and identity, read once when the simulator starts.
#[derive(Debug, Clone)]
pub struct RepoSnapshot {
    pub root: PathBuf,
    pub diff: String,
    pub head_sha: String,
    pub branch: String,
    pub user_name: Option<String>,
    pub user_email: Option<String>,
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

impl RepoSnapshot {
    /// Reads `root` with `git`; fails when it is not a git work tree.
    pub fn read(root: &Path) -> anyhow::Result<Self> {
        let head_sha = git(root, &["rev-parse", "HEAD"])
            .ok_or_else(|| {
                anyhow::anyhow!("{} is not a git repository with a commit", root.display())
            })?
            .trim()
            .to_owned();
        let mut diff = git(root, &["diff", "HEAD"]).unwrap_or_default();
        if diff.trim().is_empty() {
            diff = git(root, &["show", "--format=", "--patch", "HEAD"]).unwrap_or_default();
        }
        let branch = git(root, &["rev-parse", "--abbrev-ref", "HEAD"])
            .map(|b| b.trim().to_owned())
            .unwrap_or_else(|| "main".into());
        let config = |key: &str| {
            git(root, &["config", key])
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Ok(Self {
            root: root.to_owned(),
            diff,
            head_sha,
            branch,
            user_name: config("user.name"),
            user_email: config("user.email"),
        })
    }

    /// Contents of `file_path` inside the repository; `None` for a path
    /// that leaves it or a file that cannot be read as text.
    pub fn read_file(&self, file_path: &str) -> Option<String> {
        let rel = Path::new(file_path.trim_start_matches('/'));
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return None;
        }
        std::fs::read_to_string(self.root.join(rel)).ok()
    }
}

/// Files, added and removed lines of a unified diff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffStats {
    pub files: Vec<String>,
    pub added: u32,
    pub removed: u32,
}

/// Counts a unified diff's files and lines (`+++`/`---` headers excluded).
pub fn diff_stats(diff: &str) -> DiffStats {
    let mut stats = DiffStats::default();
    for l in diff.lines() {
        if let Some(rest) = l.strip_prefix("diff --git ") {
            let path = rest.rsplit(" b/").next().unwrap_or(rest);
            stats.files.push(path.to_owned());
        } else if l.starts_with("+++") || l.starts_with("---") {
        } else if l.starts_with('+') {
            stats.added += 1;
        } else if l.starts_with('-') {
            stats.removed += 1;
        }
    }
    stats
}

/// A small plausible diff for a task when no repository is given.
pub fn generated_diff(task_id: Uuid) -> String {
    let n = task_id.as_bytes()[0] % 5 + 1;
    let mut d = String::new();
    let _ = write!(
        d,
        "diff --git a/src/http/tasks.rs b/src/http/tasks.rs\n\
         index 3b18e51..a9c2f07 100644\n\
         --- a/src/http/tasks.rs\n\
         +++ b/src/http/tasks.rs\n\
         @@ -40,7 +40,{} @@ pub async fn get_task(\n     let task = owned_task(&state, owner, id).await?;\n-    Ok(Json(task))\n",
        7 + n
    );
    for k in 0..=n {
        let _ = writeln!(
            d,
            "+    tracing::debug!(task_id = %id, step = {k}, \"task read\");"
        );
    }
    d.push_str("+    Ok(Json(task))\n }\n");
    let _ = write!(
        d,
        "diff --git a/tests/api.rs b/tests/api.rs\n\
         index 0c1d2e3..4f5a6b7 100644\n\
         --- a/tests/api.rs\n\
         +++ b/tests/api.rs\n\
         @@ -1,3 +1,6 @@\n use meshgate::Config;\n+\n+#[tokio::test]\n+async fn unknown_task_is_404() {{}}\n"
    );
    d
}

/// gzip, then base64: the form of `patchData`.
pub fn gzip_base64(text: &str) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(text.as_bytes());
    let bytes = gz.finish().unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A 40-hex-digit commit id derived from `seed` (stable per input).
pub fn fake_sha(seed: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(seed)[..20])
}

/// Per-daemon facts the answers draw on.
pub struct AnswerCtx<'a> {
    pub repo: Option<&'a RepoSnapshot>,
    pub machine_id: &'a str,
    /// Next checkpoint number of the task asked about.
    pub checkpoint_number: u32,
    /// Serial number for pull requests of this daemon.
    pub serial: u32,
}

impl AnswerCtx<'_> {
    fn diff(&self, task_id: Uuid) -> String {
        match self.repo {
            Some(r) => r.diff.clone(),
            None => generated_diff(task_id),
        }
    }

    fn worktree(&self, task_id: Uuid) -> String {
        format!(
            "/home/sim/{}/worktrees/{}",
            self.machine_id,
            task_id.simple()
        )
    }

    fn head(&self, task_id: Uuid) -> String {
        match self.repo {
            Some(r) => r.head_sha.clone(),
            None => fake_sha(task_id.as_bytes()),
        }
    }
}

/// The answer frame (JSON text) to `cmd`, or `None` for commands that
/// are not answered here.
pub fn answer(cmd: &DaemonCommand, ctx: &AnswerCtx<'_>) -> Option<String> {
    use DaemonCommand as C;
    let v: Value = match cmd {
        C::TriggerReauth { request_id } => json!({
            "type": "reauthStatus", "requestId": request_id, "status": "url_ready",
            "loginUrl": format!("https://claude.ai/oauth/authorize?state={}", request_id.simple()),
            "tokenSaved": false,
        }),
        C::SubmitAuthCode { request_id, .. } => json!({
            "type": "reauthStatus", "requestId": request_id, "status": "completed", "tokenSaved": true,
        }),
        C::RetryCompletionAction { task_id, action } => json!({
            "type": "completionActionResult", "taskId": task_id, "success": true,
            "message": format!("{action} retried"),
            "prUrl": format!("https://github.com/sim/repo/pull/{}", ctx.serial),
        }),
        C::CloneWorktree {
            task_id,
            target_dir,
        } => json!({
            "type": "cloneWorktreeResult", "taskId": task_id, "success": true,
            "message": format!("worktree cloned to {target_dir}"), "targetDir": target_dir,
        }),
        C::CheckTargetExists {
            task_id,
            target_dir,
        } => json!({
            "type": "checkTargetExistsResult", "taskId": task_id,
            "exists": Path::new(target_dir).exists(), "targetDir": target_dir,
        }),
        C::ReadRepoFile {
            request_id,
            file_path,
            ..
        } => read_repo_file(*request_id, file_path, ctx),
        C::CreateBranch {
            task_id,
            branch_name,
            ..
        } => json!({
            "type": "branchCreated", "taskId": task_id, "branchName": branch_name, "success": true,
        }),
        C::CreateCheckpoint { task_id, message } => checkpoint(*task_id, message, ctx),
        C::InheritGitConfig { .. } => json!({
            "type": "gitConfigInherited", "success": true,
            "userEmail": ctx.repo.and_then(|r| r.user_email.clone()).unwrap_or_else(|| "sim@example.invalid".into()),
            "userName": ctx.repo.and_then(|r| r.user_name.clone()).unwrap_or_else(|| "Simulated Daemon".into()),
        }),
        C::CreateExportPatch { task_id } => {
            let diff = ctx.diff(*task_id);
            let s = diff_stats(&diff);
            json!({
                "type": "exportPatchCreated", "taskId": task_id, "success": true,
                "patchContent": diff, "filesCount": s.files.len(), "linesAdded": s.added,
                "linesRemoved": s.removed, "baseCommitSha": ctx.head(*task_id),
            })
        }
        C::MergeTaskToTarget {
            task_id,
            target_branch,
            squash,
        } => json!({
            "type": "mergeToTargetResult", "taskId": task_id, "success": true,
            "message": format!("{} into {}", if *squash { "squash-merged" } else { "merged" },
                target_branch.as_deref().unwrap_or("main")),
            "commitSha": fake_sha(format!("merge {task_id}").as_bytes()),
        }),
        C::CreatePr { task_id, .. } => json!({
            "type": "prCreated", "taskId": task_id, "success": true, "message": "pull request created",
            "prUrl": format!("https://github.com/sim/repo/pull/{}", ctx.serial), "prNumber": ctx.serial,
        }),
        C::GetWorktreeDiff { task_id } => json!({
            "type": "worktreeDiffResult", "taskId": task_id, "success": true, "diff": ctx.diff(*task_id),
        }),
        C::GetTaskDiff { task_id } => json!({
            "type": "taskDiff", "taskId": task_id, "success": true, "diff": ctx.diff(*task_id),
        }),
        C::GetWorktreeInfo { task_id } => {
            let s = diff_stats(&ctx.diff(*task_id));
            json!({
                "type": "worktreeInfoResult", "taskId": task_id, "success": true,
                "worktreePath": ctx.worktree(*task_id), "exists": true,
                "filesChanged": s.files.len(), "insertions": s.added, "deletions": s.removed,
                "files": s.files, "branch": ctx.repo.map(|r| r.branch.clone())
                    .unwrap_or_else(|| format!("meshgate/{}", task_id.simple())),
                "headSha": ctx.head(*task_id),
            })
        }
        C::CommitWorktree { task_id, message } => json!({
            "type": "worktreeCommitResult", "taskId": task_id, "success": true,
            "commitSha": fake_sha(format!("{task_id} {message}").as_bytes()),
        }),
        C::Authenticated { .. }
        | C::Error { .. }
        | C::SpawnTask { .. }
        | C::InterruptTask { .. }
        | C::SendMessage { .. }
        | C::ApplyPatchToWorktree { .. }
        | C::Reconnect { .. } => return None,
    };
    Some(v.to_string())
}

fn read_repo_file(request_id: Uuid, file_path: &str, ctx: &AnswerCtx<'_>) -> Value {
    let content = match ctx.repo {
        Some(r) => r.read_file(file_path),
        None => Some(format!(
            "# {file_path}\n\nGenerated by meshgate sim for request {request_id}.\n\n- item one\n- item two\n"
        )),
    };
    match content {
        Some(content) => json!({
            "type": "repoFileContent", "requestId": request_id, "filePath": file_path,
            "content": content, "success": true,
        }),
        None => json!({
            "type": "repoFileContent", "requestId": request_id, "filePath": file_path,
            "success": false, "error": "file not found",
        }),
    }
}

fn checkpoint(task_id: Uuid, message: &str, ctx: &AnswerCtx<'_>) -> Value {
    let diff = ctx.diff(task_id);
    let s = diff_stats(&diff);
    let n = ctx.checkpoint_number;
    let files: Vec<Value> = s
        .files
        .iter()
        .map(|f| json!({"path": f, "status": "modified"}))
        .collect();
    json!({
        "type": "checkpointCreated", "taskId": task_id, "success": true,
        "commitSha": fake_sha(format!("{task_id} checkpoint {n}").as_bytes()),
        "branchName": format!("meshgate/{}", task_id.simple()),
        "checkpointNumber": n, "filesChanged": files, "linesAdded": s.added,
        "linesRemoved": s.removed, "message": message, "patchData": gzip_base64(&diff),
        "patchBaseSha": ctx.head(task_id), "patchFilesCount": s.files.len(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::protocol::daemon::{decode, DaemonMessage};

    fn ctx() -> AnswerCtx<'static> {
        AnswerCtx {
            repo: None,
            machine_id: "sim-1",
            checkpoint_number: 1,
            serial: 7,
        }
    }

    #[test]
    fn diff_stats_count_files_and_lines_but_not_headers() {
        let s = diff_stats(&generated_diff(Uuid::nil()));
        assert_eq!(s.files, vec!["src/http/tasks.rs", "tests/api.rs"]);
        assert_eq!(s.removed, 1);
        assert_eq!(s.added, 2 + 1 + 3);
    }

    #[test]
    fn every_answer_is_a_message_the_server_decodes() {
        let t = Uuid::new_v4();
        let commands = [
            DaemonCommand::TriggerReauth { request_id: t },
            DaemonCommand::SubmitAuthCode {
                request_id: t,
                code: "c".into(),
            },
            DaemonCommand::RetryCompletionAction {
                task_id: t,
                action: "pr".into(),
            },
            DaemonCommand::CloneWorktree {
                task_id: t,
                target_dir: "/tmp/x".into(),
            },
            DaemonCommand::CheckTargetExists {
                task_id: t,
                target_dir: "/nonexistent".into(),
            },
            DaemonCommand::ReadRepoFile {
                request_id: t,
                file_path: "README.md".into(),
                repository_url: None,
            },
            DaemonCommand::CreateBranch {
                task_id: Some(t),
                branch_name: "b".into(),
                from_ref: None,
            },
            DaemonCommand::CreateCheckpoint {
                task_id: t,
                message: "m".into(),
            },
            DaemonCommand::InheritGitConfig { source_dir: None },
            DaemonCommand::CreateExportPatch { task_id: t },
            DaemonCommand::MergeTaskToTarget {
                task_id: t,
                target_branch: None,
                squash: true,
            },
            DaemonCommand::CreatePr {
                task_id: t,
                title: "t".into(),
                body: None,
                base_branch: "main".into(),
                branch: "b".into(),
            },
            DaemonCommand::GetWorktreeDiff { task_id: t },
            DaemonCommand::GetWorktreeInfo { task_id: t },
            DaemonCommand::GetTaskDiff { task_id: t },
            DaemonCommand::CommitWorktree {
                task_id: t,
                message: "m".into(),
            },
        ];
        for cmd in &commands {
            let text = answer(cmd, &ctx()).unwrap_or_else(|| panic!("no answer to {}", cmd.kind()));
            let msg = decode(&text).unwrap_or_else(|e| panic!("{}: {e:?}: {text}", cmd.kind()));
            assert!(!matches!(msg, DaemonMessage::Authenticate(_)));
        }
    }

    #[test]
    fn a_checkpoint_patch_is_gzip_of_the_diff() {
        let t = Uuid::new_v4();
        let text = answer(
            &DaemonCommand::CreateCheckpoint {
                task_id: t,
                message: "m".into(),
            },
            &ctx(),
        )
        .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let gz = base64::engine::general_purpose::STANDARD
            .decode(v["patchData"].as_str().unwrap())
            .unwrap();
        let mut diff = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut diff)
            .unwrap();
        assert_eq!(diff, generated_diff(t));
    }

    #[test]
    fn repository_files_outside_the_root_are_refused() {
        let snap = RepoSnapshot {
            root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            diff: String::new(),
            head_sha: String::new(),
            branch: "main".into(),
            user_name: None,
            user_email: None,
        };
        assert!(snap.read_file("Cargo.toml").is_some());
        assert!(snap.read_file("../../etc/passwd").is_none());
    }
}
