//! Three real meshgate processes behind a real load balancer (haproxy),
//! 20 simulated daemons and a web client connected through it. One pod is
//! SIGKILLed, another SIGTERMed (drains and exits 0), a fresh one joins;
//! daemons keep their tasks, commands and events keep flowing, and nothing
//! stored is lost or reordered.

use std::{
    collections::HashMap,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::json;
use tokio::{
    process::{Child, Command},
    sync::Mutex,
};
use uuid::Uuid;

use crate::{
    client::Daemon,
    harness::{eventually, free_port, Api, TestEnv},
};

/// Starts a pod; its log goes to `dir` (kept when the test fails).
fn spawn_pod(env: &TestEnv, port: u16, dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("serve")
        .env("MESHGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("MESHGATE_POD_ID", format!("pod-{port}"))
        .env("DATABASE_URL", &env.db_url)
        .env("REDIS_URL", &env.redis_url)
        .env("MESHGATE_REDIS_PREFIX", &env.prefix)
        .env("MESHGATE_LEASE_TTL_MS", "2000")
        .env("MESHGATE_LEASE_REFRESH_MS", "500")
        .env("MESHGATE_DISCONNECT_GRACE_MS", "15000")
        .env("MESHGATE_DRAIN_MS", "3000")
        .env("MESHGATE_SELF_PING_MS", "200")
        .env("MESHGATE_DISPATCH_SWEEP_MS", "60000")
        .env("RUST_LOG", "info,poem=warn")
        .stdout(std::fs::File::create(dir.join(format!("pod-{port}.log"))).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start meshgate")
}

/// haproxy on `front` before `pods` (HTTP mode, health-checked on
/// `/readyz` every 200 ms), balancing by `balance` (`roundrobin`, `first`…).
pub(crate) fn haproxy(front: u16, pods: &[u16], dir: &std::path::Path, balance: &str) -> Child {
    let servers: String = pods
        .iter()
        .enumerate()
        .map(|(i, p)| format!("  server p{i} 127.0.0.1:{p} check\n"))
        .collect();
    let config = format!(
        "global\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n  option redispatch\n  retries 3\nfrontend fe\n  bind 127.0.0.1:{front}\n  default_backend pods\nbackend pods\n  balance {balance}\n  option httpchk GET /readyz\n  http-check expect status 200\n  default-server inter 200ms fall 1 rise 1\n{servers}"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let bin = ["/usr/sbin/haproxy", "haproxy"]
        .into_iter()
        .find(|b| std::process::Command::new(b).arg("-v").output().is_ok())
        .expect("haproxy must be installed (scripts/ensure-services.sh installs it)");
    Command::new(bin)
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start haproxy")
}

async fn ready(port: u16) -> bool {
    reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

/// What the simulated fleet saw.
#[derive(Default)]
struct Fleet {
    /// task → next output sequence number to send
    sent: Mutex<HashMap<Uuid, u64>>,
    /// commands received, by message text
    received: Mutex<Vec<String>>,
    reconnects: AtomicU64,
    stop: AtomicBool,
}

/// One simulated daemon: connects through the balancer (again after every
/// close), streams numbered output lines for its task, records commands.
async fn run_daemon(
    lb: std::net::SocketAddr,
    key: String,
    machine: String,
    task: Arc<Mutex<Option<Uuid>>>,
    fleet: Arc<Fleet>,
) {
    while !fleet.stop.load(Ordering::Relaxed) {
        let Ok(ws) = crate::client::open(lb, Some(&key)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut d = Daemon { ws, id: None };
        d.send(json!({"type": "authenticate", "apiKey": key, "machineId": machine, "hostname": machine, "maxConcurrentTasks": 2})).await;
        match d.try_recv(Duration::from_secs(5)).await {
            Some(v) if v["type"] == "authenticated" => {}
            _ => continue,
        }
        loop {
            if fleet.stop.load(Ordering::Relaxed) {
                return;
            }
            if let Some(t) = *task.lock().await {
                let seq = {
                    let mut sent = fleet.sent.lock().await;
                    let n = sent.entry(t).or_insert(0);
                    *n += 1;
                    *n
                };
                if d.ws_send(json!({"type": "taskOutput", "taskId": t, "output": format!("seq {seq}"), "isPartial": false})).await.is_err() {
                    // Not sent: the number is reused after reconnecting.
                    *fleet.sent.lock().await.get_mut(&t).unwrap() -= 1;
                    break;
                }
            }
            match d.try_recv(Duration::from_millis(50)).await {
                Some(v) if v["type"] == "sendMessage" => fleet
                    .received
                    .lock()
                    .await
                    .push(v["message"].as_str().unwrap_or("").to_owned()),
                Some(v) if v["type"] == "reconnect" => break,
                Some(_) => {}
                None => {
                    if d.is_closed() {
                        break;
                    }
                }
            }
        }
        fleet.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn pods_are_killed_drained_and_added_behind_a_balancer_without_losing_daemons_tasks_or_rows()
{
    let env = TestEnv::new().await;
    let owner = env.owner().await;
    let dir = std::env::temp_dir().join(format!("mg-lb-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let mut pods: Vec<Option<Child>> = ports[..3]
        .iter()
        .map(|p| Some(spawn_pod(&env, *p, &dir)))
        .collect();
    pods.push(None);
    for p in &ports[..3] {
        eventually(Duration::from_secs(30), "pod ready", || async {
            ready(*p).await.then_some(())
        })
        .await;
    }
    let front = free_port();
    let _lb = haproxy(front, &ports, &dir, "roundrobin");
    let lb: std::net::SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
    eventually(Duration::from_secs(10), "balancer up", || async {
        reqwest::get(format!("http://{lb}/healthz"))
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;

    // 20 daemons, each with one running task once registered.
    let fleet = Arc::new(Fleet::default());
    let mut slots = Vec::new();
    for i in 0..20 {
        let slot = Arc::new(Mutex::new(None));
        slots.push(slot.clone());
        tokio::spawn(run_daemon(
            lb,
            owner.key.clone(),
            format!("sim-{i}"),
            slot,
            fleet.clone(),
        ));
    }
    let api = Api::new(lb, &owner.key);
    let daemons = eventually(Duration::from_secs(20), "20 daemons registered", || async {
        let (_, list) = api.get("/api/v1/mesh/daemons").await;
        let list = list.as_array()?.clone();
        (list.len() == 20).then_some(list)
    })
    .await;
    let mut tasks = HashMap::new();
    for d in &daemons {
        let id: Uuid = d["id"].as_str().unwrap().parse().unwrap();
        let machine = d["machineId"].as_str().unwrap();
        let i: usize = machine.trim_start_matches("sim-").parse().unwrap();
        let task = env.task(owner.owner_id, "running", Some(id)).await;
        *slots[i].lock().await = Some(task);
        tasks.insert(task, id);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // SIGKILL pod 0, SIGTERM pod 1 (it must drain and exit 0), start pod 3.
    pods[0].take().unwrap().start_kill().unwrap();
    let mut drained = pods[1].take().unwrap();
    let pid = drained.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-s", "TERM", &pid])
        .status()
        .unwrap()
        .success());
    pods[3] = Some(spawn_pod(&env, ports[3], &dir));
    let status = tokio::time::timeout(Duration::from_secs(30), drained.wait())
        .await
        .expect("drained in time")
        .unwrap();
    assert!(status.success(), "drained pod exits 0: {status:?}");
    eventually(Duration::from_secs(30), "fresh pod ready", || async {
        ready(ports[3]).await.then_some(())
    })
    .await;

    // Every daemon is back (through the balancer) and keeps its task.
    eventually(Duration::from_secs(30), "20 daemons back", || async {
        let (_, list) = api.get("/api/v1/mesh/daemons").await;
        (list.as_array()?.len() == 20).then_some(())
    })
    .await;
    assert!(
        fleet.reconnects.load(Ordering::Relaxed) > 0,
        "some daemons moved"
    );
    // The fresh pod takes new connections.
    let probe = Daemon::connect(
        format!("127.0.0.1:{}", ports[3]).parse().unwrap(),
        &owner.key,
        "probe",
    )
    .await;
    drop(probe);

    // Commands flow through the balancer to every daemon.
    for task in tasks.keys() {
        let (status, body) = api
            .post(
                &format!("/api/v1/mesh/tasks/{task}/message"),
                json!({"message": format!("hello {task}")}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    eventually(Duration::from_secs(10), "all commands received", || async {
        (fleet.received.lock().await.len() >= 20).then_some(())
    })
    .await;

    // Events flow: a web client through the balancer sees fresh output.
    let (first_task, _) = tasks.iter().next().unwrap();
    let mut sse = reqwest::Client::new()
        .get(format!(
            "http://{lb}/api/v1/mesh/events/sse?topic=task:{first_task}"
        ))
        .header("x-api-key", &owner.key)
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("event: taskOutput") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), sse.chunk())
            .await
            .expect("events flow")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(sse);

    fleet.stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (task, daemon) in &tasks {
        let row = env.task_row(*task).await;
        assert_eq!(
            (row.status.as_str(), row.daemon_id, row.retry_count),
            ("running", Some(*daemon), 0),
            "task kept"
        );
        // Stored lines are in order with no duplicates; only lines in the
        // SIGKILLed pod's memory may be missing.
        let seqs: Vec<u64> = sqlx::query_scalar::<_, String>(
            "SELECT content FROM task_outputs WHERE task_id = $1 ORDER BY id",
        )
        .bind(task)
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .iter()
        .map(|c| c.trim_start_matches("seq ").parse().unwrap())
        .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "order kept, no duplicates: {seqs:?}"
        );
        assert!(!seqs.is_empty());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
