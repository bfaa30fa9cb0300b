//! The live page at `/`, in a real headless browser: Debian's `chromium`
//! (installed by `scripts/ensure-browser.sh`, which `scripts/test.sh` runs),
//! driven over the DevTools protocol. Without chromium these tests fail.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    time::{timeout, Instant},
};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::{
    client::{output, Daemon, Ws},
    harness::{eventually, Api, TestEnv},
};

/// How long the page may take to show something.
const WAIT: Duration = Duration::from_secs(15);
/// Where the screenshot goes.
const SCREENSHOT: &str = "/tmp/meshgate-page.png";

/// A headless chromium with one page, over the DevTools protocol.
struct Browser {
    child: Child,
    cdp: Ws,
    next_id: u64,
    session: String,
    /// Console output, exceptions and log entries (CSP reports) of the page.
    log: Vec<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    profile: PathBuf,
    name: &'static str,
}

/// A JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

impl Browser {
    async fn launch(name: &'static str) -> Self {
        let bin = std::env::var("MESHGATE_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile =
            std::env::temp_dir().join(format!("meshgate-chromium-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).expect("browser profile directory");
        let mut child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--window-size=1280,800",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{bin}` ({e}): the page tests need Debian's chromium; \
                     run `bash scripts/ensure-browser.sh` (scripts/test.sh does)"
                )
            });
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let found = timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.trim().strip_prefix("DevTools listening on ") {
                    return Some(url.to_owned());
                }
                stderr.lock().unwrap().push(line);
            }
            None
        })
        .await;
        let Ok(Some(url)) = found else {
            panic!(
                "chromium did not open its DevTools port; its stderr:\n{}",
                stderr.lock().unwrap().join("\n")
            );
        };
        // Keep draining stderr so chromium never blocks on it.
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut kept = sink.lock().unwrap();
                kept.push(line);
                if kept.len() > 200 {
                    kept.remove(0);
                }
            }
        });
        let (cdp, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to chromium's DevTools socket");
        let mut browser = Self {
            child,
            cdp,
            next_id: 0,
            session: String::new(),
            log: Vec::new(),
            stderr,
            profile,
            name,
        };
        let target = browser
            .send(false, "Target.createTarget", json!({"url": "about:blank"}))
            .await
            .expect("create a page");
        let attached = browser
            .send(
                false,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await
            .expect("attach to the page");
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            browser.call(domain, json!({})).await;
        }
        browser
    }

    /// One DevTools command (on the page's session unless `browser_level`).
    async fn send(
        &mut self,
        browser_level: bool,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !browser_level && !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.cdp
            .send(Message::Text(msg.to_string().into()))
            .await
            .map_err(|e| format!("send {method}: {e}"))?;
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = timeout(left, self.cdp.next())
                .await
                .map_err(|_| format!("chromium did not answer {method}"))?;
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                other => return Err(format!("DevTools socket ended: {other:?}")),
            };
            let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if v["id"] == json!(id) {
                return match v.get("error") {
                    Some(err) => Err(format!("{method}: {err}")),
                    None => Ok(v["result"].clone()),
                };
            }
            self.record(&v);
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.send(false, method, params).await {
            Ok(v) => v,
            Err(e) => panic!("{}", self.report(&e).await),
        }
    }

    /// Keeps what the page printed or threw, for failure messages.
    fn record(&mut self, event: &Value) {
        let p = &event["params"];
        let line = match event["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| match &a["value"] {
                        Value::String(s) => s.clone(),
                        Value::Null => a["description"].as_str().unwrap_or("").to_owned(),
                        v => v.to_string(),
                    })
                    .collect();
                format!(
                    "console.{}: {}",
                    p["type"].as_str().unwrap_or("?"),
                    args.join(" ")
                )
            }
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                let what = d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str())
                    .unwrap_or("?");
                format!("exception: {what}")
            }
            Some("Log.entryAdded") => format!(
                "log.{}: {}",
                p["entry"]["level"].as_str().unwrap_or("?"),
                p["entry"]["text"].as_str().unwrap_or("")
            ),
            _ => return,
        };
        self.log.push(line);
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self
            .send(
                false,
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            let what = ex["exception"]["description"]
                .as_str()
                .or(ex["text"].as_str())
                .unwrap_or("exception");
            return Err(format!("`{expr}` threw: {what}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Runs `expr` for its effect; it must not throw.
    async fn run(&mut self, expr: &str) -> Value {
        match self.eval(expr).await {
            Ok(v) => v,
            Err(e) => panic!("{}", self.report(&e).await),
        }
    }

    /// Polls `expr` until it equals `expected` (within `limit`).
    async fn wait_for_within(&mut self, limit: Duration, what: &str, expr: &str, expected: Value) {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.eval(expr).await {
                Ok(v) if v == expected => return,
                Ok(v) => v.to_string(),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                let msg = format!(
                    "timed out waiting for: {what}\n  {expr}\n  expected {expected}\n  last {last}"
                );
                panic!("{}", self.report(&msg).await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for(&mut self, what: &str, expr: &str, expected: Value) {
        self.wait_for_within(WAIT, what, expr, expected).await;
    }

    async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            "the page to load",
            "document.readyState === 'complete' && !!document.getElementById('conn')",
            json!(true),
        )
        .await;
    }

    async fn screenshot(&mut self, path: &str) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or(""))
            .expect("screenshot is base64");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// A failure message with what the page logged, after a screenshot.
    async fn report(&mut self, msg: &str) -> String {
        let path = format!("/tmp/meshgate-page-{}-failure.png", self.name);
        let shot = self
            .send(false, "Page.captureScreenshot", json!({"format": "png"}))
            .await;
        if let Ok(png) = shot.map(|s| {
            base64::engine::general_purpose::STANDARD.decode(s["data"].as_str().unwrap_or(""))
        }) {
            let _ = png.map(|png| std::fs::write(&path, png));
        }
        format!(
            "{msg}\npage log:\n  {}\nchromium stderr (last lines):\n  {}\nscreenshot: {path}",
            self.log.join("\n  "),
            self.stderr.lock().unwrap().join("\n  ")
        )
    }

    /// Closes chromium and waits for it.
    async fn close(mut self) {
        let _ = self.send(true, "Browser.close", json!({})).await;
        if timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Killed if still running (also after a failed assertion), then its
        // profile goes; its helper processes may take a moment to let go.
        let _ = self.child.start_kill();
        for _ in 0..40 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..10 {
            match std::fs::remove_dir_all(&self.profile) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => break,
            }
        }
    }
}

/// `/` answers the page itself, with its security headers.
async fn page_is_served(addr: std::net::SocketAddr) {
    let resp = reqwest::get(format!("http://{addr}/"))
        .await
        .expect("GET /");
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (kind, csp) = (header("content-type"), header("content-security-policy"));
    let body = resp.text().await.unwrap_or_default();
    assert!(
        status == 200 && kind.starts_with("text/html") && body.contains("<title>meshgate</title>"),
        "GET / must serve the page (src/http/page.rs, routed in src/http/mod.rs); \
         got {status} {kind}: {body:.200}"
    );
    for part in [
        "default-src 'none'",
        "script-src 'sha256-",
        "connect-src 'self'",
    ] {
        assert!(
            csp.contains(part),
            "Content-Security-Policy lacks {part}: {csp}"
        );
    }
}

/// The texts of the output lines on screen.
const LINES: &str = "[...document.querySelectorAll('#output .line .text')].map(e => e.textContent)";

fn daemon_name(id: Uuid) -> String {
    format!("document.querySelector('#daemons li[data-id=\"{id}\"] .name')?.textContent ?? null")
}

fn task_status(id: Uuid) -> String {
    format!("document.querySelector('#tasks li[data-id=\"{id}\"]')?.dataset.status ?? null")
}

/// Opened from a ticket link: a daemon that connects shows up, a task that
/// changes shows up, and its output lines appear as they arrive.
#[tokio::test]
async fn ticket_link_shows_a_daemon_and_live_output() {
    let env = TestEnv::new().await;
    let pod = env.pod().await;
    let owner = env.owner().await;
    let api = Api::new(pod.addr(), &owner.key);
    let (status, t) = api.post("/api/v1/mesh/tickets", json!({})).await;
    assert_eq!(status, 201, "{t}");
    let ticket = t["ticket"].as_str().unwrap();

    page_is_served(pod.addr()).await;
    let mut b = Browser::launch("ticket").await;
    b.navigate(&format!("http://{}/#ticket={ticket}", pod.addr()))
        .await;
    b.wait_for(
        "the event socket to be live",
        "document.getElementById('conn').dataset.state",
        json!("live"),
    )
    .await;
    // The ticket left the address bar; no key was stored.
    assert_eq!(
        b.run("[location.hash, location.href.includes('ticket'), sessionStorage.getItem('meshgate.key')]")
            .await,
        json!(["", false, null])
    );
    assert_eq!(
        b.run("document.querySelectorAll('#daemons li').length")
            .await,
        json!(0)
    );

    let mut d = Daemon::connect(pod.addr(), &owner.key, "page-1").await;
    b.wait_for(
        "the daemon to appear",
        &daemon_name(d.id()),
        json!("host-page-1"),
    )
    .await;

    let task = env.task(owner.owner_id, "starting", Some(d.id())).await;
    d.send(json!({"type": "taskStatusChange", "taskId": task, "oldStatus": "starting", "newStatus": "running"}))
        .await;
    b.wait_for(
        "the task to appear as running",
        &task_status(task),
        json!("running"),
    )
    .await;

    b.run(&format!(
        "document.querySelector('#tasks li[data-id=\"{task}\"]').click()"
    ))
    .await;
    b.wait_for(
        "the task's output to be followed",
        "[document.getElementById('output').dataset.task, document.getElementById('output').dataset.state]",
        json!([task.to_string(), "live"]),
    )
    .await;

    let lines = ["first line", "second <b>line</b> & more", "third line"];
    for line in lines {
        d.send(output(task, line)).await;
    }
    b.wait_for("the three output lines, in order", LINES, json!(lines))
        .await;
    // Text stays text.
    assert_eq!(
        b.run("document.querySelectorAll('#output b').length").await,
        json!(0)
    );

    drop(d);
    b.wait_for(
        "the daemon to disappear",
        "document.querySelectorAll('#daemons li[data-id]').length",
        json!(0),
    )
    .await;
    assert!(
        !b.log
            .iter()
            .any(|l| l.starts_with("exception") || l.contains("Content Security Policy")),
        "page log: {:?}",
        b.log
    );
    b.close().await;
}

/// Signed in with a pasted key: the daemon list and stored output are read,
/// live lines follow them without duplicates, and after the replica goes
/// away (close 1012) the page reconnects with a new ticket and re-reads.
#[tokio::test]
async fn pasted_key_reads_state_then_follows_and_survives_a_restart() {
    let env = TestEnv::new().await;
    // The restart below must not outlast the daemon's grace period, or its
    // task goes back to pending and its output is (rightly) refused.
    let grace = ["--disconnect-grace-ms=60000"];
    let pod = env.pod_with(&grace).await;
    let addr = pod.addr();
    let owner = env.owner().await;
    let api = Api::new(addr, &owner.key);

    // Before the page opens: a daemon, a running task, two stored lines.
    let mut d = Daemon::connect(addr, &owner.key, "page-2").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    d.send(output(task, "stored one")).await;
    d.send(output(
        task,
        r#"{"type":"assistant","message":{"content":[{"type":"text","text":"stored two"}]}}"#,
    ))
    .await;
    let outputs = format!("/api/v1/mesh/tasks/{task}/outputs");
    eventually(WAIT, "two stored lines", || async {
        let (_, rows) = api.get(&outputs).await;
        (rows.as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await;

    page_is_served(addr).await;
    let mut b = Browser::launch("key").await;
    b.navigate(&format!("http://{addr}/")).await;
    assert_eq!(
        b.run("[document.getElementById('login').hidden, document.getElementById('conn').dataset.state]")
            .await,
        json!([false, "signed-out"])
    );
    b.run(&format!(
        "document.getElementById('key').value = {}; document.getElementById('login').requestSubmit()",
        js(&owner.key)
    ))
    .await;
    b.wait_for(
        "the event socket to be live",
        "document.getElementById('conn').dataset.state",
        json!("live"),
    )
    .await;
    b.wait_for(
        "the daemon connected before the page, from GET /daemons",
        &daemon_name(d.id()),
        json!("host-page-2"),
    )
    .await;
    assert_eq!(
        b.run(&format!(
            "[location.href.includes({}), sessionStorage.getItem('meshgate.key') === {}, document.getElementById('login').hidden]",
            js(&owner.key),
            js(&owner.key)
        ))
        .await,
        json!([false, true, true])
    );

    // Paste the task id.
    b.run(&format!(
        "document.getElementById('task-id').value = {}; document.getElementById('follow').requestSubmit()",
        js(&task.to_string())
    ))
    .await;
    b.wait_for(
        "the pasted task, read with GET /tasks/{id}",
        &format!(
            "[{}, document.querySelector('#tasks li[data-id=\"{task}\"] .name')?.textContent]",
            task_status(task)
        ),
        json!(["running", format!("test task ({})", &task.to_string()[..8])]),
    )
    .await;
    b.wait_for(
        "the stored lines",
        &format!("document.getElementById('output').dataset.state === 'live' && {LINES}"),
        json!(["stored one", "stored two"]),
    )
    .await;
    d.send(output(task, "live three")).await;
    d.send(output(task, "live four")).await;
    b.wait_for(
        "stored then live lines, once each",
        LINES,
        json!(["stored one", "stored two", "live three", "live four"]),
    )
    .await;
    assert_eq!(
        b.run("[...document.querySelectorAll('#output .line')].map(l => l.dataset.type)")
            .await,
        json!(["raw", "assistant", "raw", "raw"])
    );

    // The replica drains (close 1012) and a new one takes its address.
    let drained = tokio::spawn(pod.shutdown());
    b.wait_for(
        "the page to notice the drain",
        "document.getElementById('conn').dataset.state",
        json!("offline"),
    )
    .await;
    drained.await.unwrap();
    drop(d);
    let listener = eventually(WAIT, "the address to be free again", || async {
        tokio::net::TcpListener::bind(addr).await.ok()
    })
    .await;
    let pod2 = meshgate::start(env.config(&grace), listener)
        .await
        .expect("second pod starts");
    // Output while the page was away: it must be re-read, not lost.
    let mut d = Daemon::connect(pod2.addr(), &owner.key, "page-2").await;
    d.send(output(task, "while away five")).await;
    b.wait_for_within(
        Duration::from_secs(40),
        "the page to reconnect with a new ticket",
        "document.getElementById('conn').dataset.state",
        json!("live"),
    )
    .await;
    b.wait_for(
        "all lines once, in order, after the re-read",
        &format!("document.getElementById('output').dataset.state === 'live' && {LINES}"),
        json!([
            "stored one",
            "stored two",
            "live three",
            "live four",
            "while away five"
        ]),
    )
    .await;
    d.send(output(task, "live six")).await;
    b.wait_for(
        "live lines after the reconnect",
        &format!("{LINES}.slice(-2)"),
        json!(["while away five", "live six"]),
    )
    .await;
    b.wait_for(
        "the daemon listed after the re-read",
        &daemon_name(d.id()),
        json!("host-page-2"),
    )
    .await;
    b.screenshot(SCREENSHOT).await;
    assert!(
        !b.log
            .iter()
            .any(|l| l.starts_with("exception") || l.contains("Content Security Policy")),
        "page log: {:?}",
        b.log
    );
    b.close().await;
    pod2.shutdown().await;
}

#[tokio::test]
async fn the_page_resumes_its_task_through_another_replica_when_its_own_is_killed() {
    let env = TestEnv::new().await;
    let grace = ["--disconnect-grace-ms=60000"];
    // Pods A and B behind a balancer that prefers A while it is up; the
    // daemon is on pod C, outside it.
    let (a, b, c) = (
        env.pod_with(&grace).await,
        env.pod_with(&grace).await,
        env.pod_with(&grace).await,
    );
    let dir = std::env::temp_dir().join(format!("mg-page-lb-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let front = crate::harness::free_port();
    let _lb = crate::balancer::haproxy(front, &[a.addr().port(), b.addr().port()], &dir, "first");
    let lb: std::net::SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
    eventually(WAIT, "the balancer up", || async {
        let r = reqwest::get(format!("http://{lb}/readyz")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let owner = env.owner().await;
    let mut d = Daemon::connect(c.addr(), &owner.key, "page-3").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    d.send(output(task, "line 0")).await;
    d.send(output(task, "line 1")).await;

    let mut b_ = Browser::launch("failover").await;
    b_.navigate(&format!("http://{lb}/")).await;
    b_.run(&format!(
        "document.getElementById('key').value = {}; document.getElementById('login').requestSubmit()",
        js(&owner.key)
    ))
    .await;
    b_.wait_for(
        "live",
        "document.getElementById('conn').dataset.state",
        json!("live"),
    )
    .await;
    b_.run(&format!(
        "document.getElementById('task-id').value = {}; document.getElementById('follow').requestSubmit()",
        js(&task.to_string())
    ))
    .await;
    b_.wait_for(
        "the stored lines, replayed over the socket",
        &format!("document.getElementById('output').dataset.state === 'live' && {LINES}"),
        json!(["line 0", "line 1"]),
    )
    .await;
    d.send(output(task, "line 2")).await;
    b_.wait_for("a live line", LINES, json!(["line 0", "line 1", "line 2"]))
        .await;

    // Pod A dies with the page's socket; lines keep coming meanwhile.
    a.kill().await;
    for i in 3..10 {
        d.send(output(task, &format!("line {i}"))).await;
    }
    let expected: Vec<String> = (0..10).map(|i| format!("line {i}")).collect();
    b_.wait_for_within(
        Duration::from_secs(40),
        "every line once, in order, through pod B",
        &format!("document.getElementById('output').dataset.state === 'live' && {LINES}"),
        json!(expected),
    )
    .await;
    d.send(output(task, "line 10")).await;
    b_.wait_for(
        "live again",
        &format!("{LINES}.slice(-2)"),
        json!(["line 9", "line 10"]),
    )
    .await;
    // All of it over the socket (subscribe with `since`), none re-read
    // over HTTP.
    assert_eq!(
        b_.run("performance.getEntriesByType('resource').filter(e => e.name.includes('/outputs')).length")
            .await,
        json!(0)
    );
    assert!(
        !b_.log.iter().any(|l| l.starts_with("exception")),
        "page log: {:?}",
        b_.log
    );
    b_.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    drop((b, c));
}
