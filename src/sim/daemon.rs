//! One simulated daemon: connect, authenticate, serve commands, run tasks,
//! reconnect with backoff. Everything happens on the daemon's one task; its
//! running tasks are a short list polled by a timer, not tasks of their own.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::json;
use tokio::{net::TcpStream, time::Instant};
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig, Message,
    },
    MaybeTlsStream, WebSocketStream,
};
use uuid::Uuid;

use super::{
    answers::{self, AnswerCtx},
    output, RunEnd, Shared,
};
use crate::protocol::daemon::DaemonCommand;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Lines written before one flush when a task streams without delay.
const BURST: u32 = 32;
/// How long connecting plus authenticating may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a session ended.
enum End {
    /// The simulator is stopping.
    Stop,
    /// The server sent `reconnect` (a draining pod).
    Reconnect,
    /// The socket closed or failed.
    Closed(String),
}

/// A task the daemon is running.
struct Running {
    id: Uuid,
    /// Number of this run in the whole simulator.
    run: u64,
    next_line: u32,
    due: Instant,
}

/// What one daemon keeps across reconnects.
struct Daemon {
    slot: usize,
    machine_id: String,
    tasks: Vec<Running>,
    /// Checkpoints taken per task (few tasks at a time: a short list).
    checkpoints: Vec<(Uuid, u32)>,
    serial: u32,
    /// Connection attempts so far (picks the server to dial).
    dials: usize,
}

/// Exponential backoff with jitter: 200 ms doubling to 5 s.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        d.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
    }
}

pub(super) async fn run(slot: usize, sh: Arc<Shared>) {
    let index = sh.config.first_index + slot;
    let mut d = Daemon {
        slot,
        machine_id: format!("{}-{index}", sh.config.machine_prefix),
        tasks: Vec::new(),
        checkpoints: Vec::new(),
        serial: 0,
        dials: slot,
    };
    let mut backoff = Backoff(Backoff::FIRST);
    loop {
        if sh.stop.is_cancelled() {
            return;
        }
        let until = Duration::from_millis(sh.offline_until_ms[slot].load(Ordering::Relaxed));
        if let Some(wait) = until.checked_sub(sh.epoch.elapsed()) {
            pause(&sh, wait).await;
        }
        let permit = tokio::select! {
            _ = sh.stop.cancelled() => return,
            p = sh.connect_gate.acquire() => p,
        };
        let started = Instant::now();
        let opened = tokio::select! {
            _ = sh.stop.cancelled() => return,
            r = tokio::time::timeout(CONNECT_TIMEOUT, open(&sh, &d)) => {
                r.unwrap_or_else(|_| Err("connect timed out".into()))
            }
        };
        drop(permit);
        d.dials += 1;
        let (mut ws, daemon_id) = match opened {
            Ok(ok) => ok,
            Err(why) => {
                sh.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                sh.observer.disconnected(slot, &why);
                pause(&sh, backoff.next()).await;
                continue;
            }
        };
        backoff = Backoff(Backoff::FIRST);
        let _ = sh.ids[slot].set(daemon_id);
        sh.stats.authenticated.fetch_add(1, Ordering::Relaxed);
        sh.stats.open.fetch_add(1, Ordering::Relaxed);
        sh.observer
            .authenticated(slot, daemon_id, started.elapsed());
        let end = d.session(&mut ws, &sh).await;
        sh.stats.open.fetch_sub(1, Ordering::Relaxed);
        match end {
            End::Stop => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return;
            }
            End::Reconnect => {
                sh.stats.reconnect_commands.fetch_add(1, Ordering::Relaxed);
                sh.observer.disconnected(slot, "server sent reconnect");
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                // Spread the herd over a second: every daemon of the pod got it.
                let wait = Duration::from_millis(rand::thread_rng().gen_range(50..1_000));
                pause(&sh, wait).await;
            }
            End::Closed(why) => {
                sh.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                sh.observer.disconnected(slot, &why);
                pause(&sh, backoff.next()).await;
            }
        }
    }
}

async fn pause(sh: &Shared, d: Duration) {
    tokio::select! {
        _ = sh.stop.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// Opens the socket and authenticates; the daemon id on success.
async fn open(sh: &Shared, d: &Daemon) -> Result<(Ws, Uuid), String> {
    let urls = &sh.config.other_urls;
    let url = match d.dials % (urls.len() + 1) {
        0 => &sh.config.url,
        i => &urls[i - 1],
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad url: {e}"))?;
    let key = HeaderValue::from_str(sh.config.key.expose()).map_err(|_| "bad key".to_owned())?;
    req.headers_mut().insert("x-api-key", key);
    // Small buffers: most daemons are idle most of the time.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                format!("upgrade refused: {} {body}", resp.status())
            }
            e => format!("connect failed: {e}"),
        })?;
    let hello = json!({
        "type": "authenticate",
        "apiKey": sh.config.key.expose(),
        "machineId": d.machine_id,
        "hostname": format!("{}.sim.invalid", d.machine_id),
        "maxConcurrentTasks": sh.config.max_concurrent_tasks,
    });
    send(&mut ws, hello.to_string()).await?;
    let daemon_id = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<DaemonCommand>(&t) {
                Ok(DaemonCommand::Authenticated { daemon_id }) => break daemon_id,
                Ok(DaemonCommand::Error { code, message }) => {
                    return Err(format!("authenticate refused: {code}: {message}"))
                }
                _ => continue,
            },
            Some(Ok(Message::Close(f))) => {
                return Err(format!("closed while authenticating: {f:?}"))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("socket failed while authenticating: {e}")),
            None => return Err("closed while authenticating".into()),
        }
    };
    if sh.config.send_directories {
        let home = format!("/home/sim/{}", d.machine_id);
        let dirs = json!({
            "type": "daemonDirectories",
            "workingDirectory": format!("{home}/work"),
            "homeDirectory": home,
            "worktreesDirectory": format!("{home}/worktrees"),
        });
        send(&mut ws, dirs.to_string()).await?;
    }
    Ok((ws, daemon_id))
}

async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("send failed: {e}"))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Daemon {
    async fn session(&mut self, ws: &mut Ws, sh: &Shared) -> End {
        let period = sh.config.heartbeat;
        let first = Instant::now() + period.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
        let mut heartbeat = tokio::time::interval_at(first, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Far enough away to never fire; used while no task runs.
        let idle = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let due = self.tasks.iter().map(|t| t.due).min();
            let step = tokio::select! {
                biased;
                _ = sh.stop.cancelled() => return End::Stop,
                _ = sh.kicks[self.slot].notified() => {
                    sh.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    Err(End::Closed(super::DROPPED.into()))
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => self.on_command(ws, sh, &t).await,
                    Some(Ok(Message::Close(f))) => Err(End::Closed(format!("server closed: {f:?}"))),
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(End::Closed(format!("socket failed: {e}"))),
                    None => Err(End::Closed("socket ended".into())),
                },
                _ = heartbeat.tick() => {
                    let active: Vec<Uuid> = self.tasks.iter().map(|t| t.id).collect();
                    let hb = json!({"type": "heartbeat", "activeTasks": active});
                    send(ws, hb.to_string()).await.map_err(End::Closed)
                }
                _ = tokio::time::sleep_until(due.unwrap_or(idle)), if due.is_some() => {
                    self.emit_due(ws, sh).await.map_err(End::Closed)
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn on_command(&mut self, ws: &mut Ws, sh: &Shared, text: &str) -> Result<(), End> {
        let Ok(cmd) = serde_json::from_str::<DaemonCommand>(text) else {
            return Ok(()); // unknown fields are fine; unknown types are ignored
        };
        sh.stats.commands.fetch_add(1, Ordering::Relaxed);
        sh.observer.command(self.slot, &cmd, SystemTime::now());
        match cmd {
            DaemonCommand::SpawnTask { task_id, .. } => self.spawn(ws, sh, task_id).await,
            DaemonCommand::InterruptTask { task_id, .. } => {
                let Some(pos) = self.tasks.iter().position(|t| t.id == task_id) else {
                    return Ok(());
                };
                let t = self.tasks.swap_remove(pos);
                sh.stats.tasks_interrupted.fetch_add(1, Ordering::Relaxed);
                sh.observer
                    .task_ended(self.slot, task_id, t.run, RunEnd::Interrupted, t.next_line);
                let change = status_change(task_id, "running", "interrupted");
                send(ws, change).await.map_err(End::Closed)
            }
            DaemonCommand::Reconnect { .. } => Err(End::Reconnect),
            DaemonCommand::Error { .. } => {
                sh.stats.errors_received.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            other => {
                let checkpoint_number = match &other {
                    DaemonCommand::CreateCheckpoint { task_id, .. } => {
                        self.next_checkpoint(*task_id)
                    }
                    _ => 0,
                };
                if matches!(
                    other,
                    DaemonCommand::CreatePr { .. } | DaemonCommand::RetryCompletionAction { .. }
                ) {
                    self.serial += 1;
                }
                let ctx = AnswerCtx {
                    repo: sh.repo.as_ref(),
                    machine_id: &self.machine_id,
                    checkpoint_number,
                    serial: self.serial,
                };
                match answers::answer(&other, &ctx) {
                    Some(reply) => {
                        sh.stats.answers.fetch_add(1, Ordering::Relaxed);
                        send(ws, reply).await.map_err(End::Closed)
                    }
                    None => Ok(()),
                }
            }
        }
    }

    fn next_checkpoint(&mut self, task_id: Uuid) -> u32 {
        if let Some((_, n)) = self.checkpoints.iter_mut().find(|(t, _)| *t == task_id) {
            *n += 1;
            return *n;
        }
        if self.checkpoints.len() >= 16 {
            self.checkpoints.remove(0);
        }
        self.checkpoints.push((task_id, 1));
        1
    }

    /// `spawnTask`: report running, register a tool key, start printing.
    async fn spawn(&mut self, ws: &mut Ws, sh: &Shared, task_id: Uuid) -> Result<(), End> {
        if self.tasks.iter().any(|t| t.id == task_id) {
            return Ok(()); // a repeat: the seed's daemons ignore it too
        }
        sh.stats.tasks_started.fetch_add(1, Ordering::Relaxed);
        let run = sh.runs.fetch_add(1, Ordering::Relaxed) + 1;
        sh.observer.task_started(self.slot, task_id, run);
        ws.feed(Message::text(status_change(task_id, "starting", "running")))
            .await
            .map_err(|e| End::Closed(format!("send failed: {e}")))?;
        let key = json!({
            "type": "registerToolKey",
            "taskId": task_id,
            "key": format!("simtk_{}", Uuid::new_v4().simple()),
        });
        send(ws, key.to_string()).await.map_err(End::Closed)?;
        self.tasks.push(Running {
            id: task_id,
            run,
            next_line: 0,
            due: Instant::now(),
        });
        Ok(())
    }

    /// Prints the lines that are due: one per task with a delay, a burst
    /// per task without. Finished tasks send `taskComplete`.
    async fn emit_due(&mut self, ws: &mut Ws, sh: &Shared) -> Result<(), String> {
        let now = Instant::now();
        let total = sh.config.output_lines.max(1);
        let delay = Duration::from_micros(sh.line_delay_us.load(Ordering::Relaxed));
        let finish = sh.finish.load(Ordering::Relaxed);
        let mut done = Vec::new();
        for t in self.tasks.iter_mut().filter(|t| t.due <= now) {
            if finish && t.next_line + 1 < total {
                t.next_line = total - 1;
            }
            let burst = if delay.is_zero() { BURST } else { 1 };
            for _ in 0..burst {
                let line = if sh.config.numbered_output {
                    output::numbered(t.run, t.next_line, total)
                } else {
                    let stamp = sh.config.stamp_output.then(now_ns);
                    output::line(t.id, t.next_line, total, stamp)
                };
                let frame = json!({"type": "taskOutput", "taskId": t.id, "output": line, "isPartial": false});
                ws.feed(Message::text(frame.to_string()))
                    .await
                    .map_err(|e| format!("send failed: {e}"))?;
                sh.stats.output_lines.fetch_add(1, Ordering::Relaxed);
                t.next_line += 1;
                if t.next_line == total / 2 && total >= 10 {
                    let progress = json!({
                        "type": "taskProgress", "taskId": t.id,
                        "summary": format!("{} of {total} steps done", t.next_line),
                    });
                    ws.feed(Message::text(progress.to_string()))
                        .await
                        .map_err(|e| format!("send failed: {e}"))?;
                }
                if t.next_line >= total {
                    done.push((t.id, t.run));
                    break;
                }
            }
            t.due = if delay.is_zero() {
                now
            } else {
                (t.due + delay).max(now)
            };
        }
        for (id, run) in done {
            self.tasks.retain(|t| t.id != id);
            let complete = json!({"type": "taskComplete", "taskId": id, "success": true});
            ws.feed(Message::text(complete.to_string()))
                .await
                .map_err(|e| format!("send failed: {e}"))?;
            sh.stats.tasks_completed.fetch_add(1, Ordering::Relaxed);
            sh.observer
                .task_ended(self.slot, id, run, RunEnd::Completed, total);
        }
        ws.flush().await.map_err(|e| format!("send failed: {e}"))
    }
}

fn status_change(task_id: Uuid, old: &str, new: &str) -> String {
    json!({"type": "taskStatusChange", "taskId": task_id, "oldStatus": old, "newStatus": new})
        .to_string()
}
