//! Web clients: events from every replica through any replica, topics,
//! tickets, SSE, slow clients, and subscriptions only where clients are.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};
use uuid::Uuid;

use crate::{
    client::{output, Daemon, Ws},
    harness::{eventually, Api, TestEnv},
};

/// A web client on the event WebSocket.
pub(crate) struct Watcher {
    pub(crate) ws: Ws,
}

impl Watcher {
    pub(crate) async fn open(
        addr: std::net::SocketAddr,
        key: Option<&str>,
        ticket: Option<&str>,
    ) -> Result<Self, u16> {
        let url = match ticket {
            Some(t) => format!("ws://{addr}/api/v1/mesh/events?ticket={t}"),
            None => format!("ws://{addr}/api/v1/mesh/events"),
        };
        let mut req = url.into_client_request().unwrap();
        if let Some(k) = key {
            req.headers_mut()
                .insert("x-api-key", HeaderValue::from_str(k).unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Self { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("{e}"),
        }
    }

    pub(crate) async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub(crate) async fn subscribe(&mut self, topic: &str) -> Value {
        self.send(json!({"type": "subscribe", "topic": topic}))
            .await;
        self.next().await
    }

    pub(crate) async fn try_next(&mut self, wait: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => return None,
            }
        }
    }

    pub(crate) async fn next(&mut self) -> Value {
        self.try_next(Duration::from_secs(5))
            .await
            .expect("an event within 5 s")
    }
}

async fn numsub(env: &TestEnv, pod: &meshgate::Pod, channel: &str) -> i64 {
    let channel = format!("{}:{channel}", env.prefix);
    let (sub, slot) = if crate::harness::sharded() {
        ("SHARDNUMSUB", Some(meshgate::cluster::keys::slot(&channel)))
    } else {
        ("NUMSUB", None)
    };
    let reply: Vec<fred::types::Value> = fred::interfaces::ClientLike::custom(
        &pod.state().redis.client,
        fred::types::CustomCommand::new_static("PUBSUB", slot, false),
        vec![sub.to_owned(), channel],
    )
    .await
    .unwrap();
    reply[1].as_i64().unwrap()
}

#[tokio::test]
async fn a_client_on_pod_c_sees_a_tasks_output_and_status_from_pods_a_and_b_and_strangers_see_nothing(
) {
    let env = TestEnv::new().await;
    let (a, b, c) = (env.pod().await, env.pod().await, env.pod().await);
    let (owner, stranger) = (env.owner().await, env.owner().await);
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "starting", Some(d.id())).await;

    let mut w = Watcher::open(c.addr(), Some(&owner.key), None)
        .await
        .unwrap();
    assert_eq!(
        w.subscribe(&format!("task:{task}")).await,
        json!({"type": "subscribed", "topic": format!("task:{task}")})
    );
    let mut s = Watcher::open(c.addr(), Some(&stranger.key), None)
        .await
        .unwrap();
    let refused = s.subscribe(&format!("task:{task}")).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("FORBIDDEN"))
    );
    assert_eq!(s.subscribe("task:nonsense").await["code"], "BAD_TOPIC");
    assert_eq!(s.subscribe("everything").await["code"], "BAD_TOPIC");
    assert_eq!(s.subscribe("owner").await["type"], "subscribed");

    for i in 0..200 {
        d.send(output(task, &format!("line {i}"))).await;
    }
    for i in 0..200 {
        let e = w.next().await;
        assert_eq!(
            (e["type"].as_str(), e["content"].clone()),
            (Some("taskOutput"), json!(format!("line {i}")))
        );
    }
    // The daemon moves to pod B and reports a status change there.
    drop(d);
    let mut d = Daemon::connect(b.addr(), &owner.key, "m1").await;
    d.send(json!({"type": "taskStatusChange", "taskId": task, "oldStatus": "starting", "newStatus": "running"})).await;
    let e = w.next().await;
    assert_eq!(
        (e["type"].as_str(), e["status"].as_str()),
        (Some("taskUpdated"), Some("running"))
    );

    // The stranger's owner topic stays silent: nothing of this owner leaks.
    assert!(s.try_next(Duration::from_millis(500)).await.is_none());
}

/// Reads an SSE response into (event name, data) pairs.
pub(crate) struct SseReader {
    pub(crate) resp: reqwest::Response,
    pub(crate) buf: String,
    pub(crate) events: Vec<(String, Value)>,
    /// Each event's `id:` line, if it had one.
    pub(crate) ids: Vec<Option<String>>,
}

impl SseReader {
    pub(crate) fn new(resp: reqwest::Response) -> Self {
        Self {
            resp,
            buf: String::new(),
            events: Vec::new(),
            ids: Vec::new(),
        }
    }

    pub(crate) async fn read_until(&mut self, n: usize) {
        while self.events.len() < n {
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.resp.chunk())
                .await
                .expect("sse data within 5 s")
                .unwrap()
                .expect("stream open");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let name = block
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .map(str::to_owned);
                let data = block.lines().find_map(|l| l.strip_prefix("data: "));
                let id = block
                    .lines()
                    .find_map(|l| l.strip_prefix("id: "))
                    .map(str::to_owned);
                if let (Some(name), Some(data)) = (name, data) {
                    self.events
                        .push((name, serde_json::from_str(data).unwrap()));
                    self.ids.push(id);
                }
            }
        }
    }
}

#[tokio::test]
async fn sse_delivers_the_same_events_as_the_websocket() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    let mut w = Watcher::open(b.addr(), Some(&owner.key), None)
        .await
        .unwrap();
    w.subscribe(&format!("task:{task}")).await;

    let resp = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/mesh/events/sse?topic=task%3A{task}",
            b.addr()
        ))
        .header("x-api-key", &owner.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut sse = SseReader::new(resp);
    sse.read_until(1).await;
    for i in 0..5 {
        d.send(output(task, &format!("l{i}"))).await;
    }
    sse.read_until(6).await;
    let sse_events = &sse.events;
    assert_eq!(sse_events[0].0, "subscribed");
    for i in 0..5 {
        let ws_event = w.next().await;
        let (name, data) = &sse_events[i + 1];
        assert_eq!(name, "taskOutput", "event name is the type");
        assert_eq!(data, &ws_event, "same event on both");
    }

    let forbidden = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/mesh/events/sse?topic=task:{}",
            b.addr(),
            Uuid::new_v4()
        ))
        .header("x-api-key", &owner.key)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status().as_u16(), 403);
}

#[tokio::test]
async fn a_ticket_works_once_on_another_replica_and_not_after_it_expires() {
    let env = TestEnv::new().await;
    let a = env.pod_with(&["--ticket-ttl-ms=600"]).await;
    let b = env.pod_with(&["--ticket-ttl-ms=600"]).await;
    let owner = env.owner().await;
    let api = Api::new(a.addr(), &owner.key);

    let (status, t) = api.post("/api/v1/mesh/tickets", json!({})).await;
    assert_eq!(status, 201);
    assert!(t["expiresAt"].is_string());
    let ticket = t["ticket"].as_str().unwrap().to_owned();
    let mut w = Watcher::open(b.addr(), None, Some(&ticket))
        .await
        .expect("ticket accepted on b");
    assert_eq!(w.subscribe("owner").await["type"], "subscribed");
    assert_eq!(
        Watcher::open(b.addr(), None, Some(&ticket)).await.err(),
        Some(401),
        "used twice"
    );
    assert_eq!(
        Watcher::open(a.addr(), None, None).await.err(),
        Some(401),
        "no key, no ticket"
    );

    let (_, t) = api.post("/api/v1/mesh/tickets", json!({})).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        Watcher::open(b.addr(), None, Some(t["ticket"].as_str().unwrap()))
            .await
            .err(),
        Some(401),
        "expired"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_while_another_keeps_receiving() {
    let env = TestEnv::new().await;
    // A queue that holds a whole ingest batch (bursts of up to 1,000 events),
    // and a flood far larger than queue and socket buffers together.
    let a = env.pod_with(&["--client-queue=1024"]).await;
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    let topic = format!("task:{task}");
    let mut slow = Watcher::open(a.addr(), Some(&owner.key), None)
        .await
        .unwrap();
    slow.subscribe(&topic).await;
    let mut fast = Watcher::open(a.addr(), Some(&owner.key), None)
        .await
        .unwrap();
    fast.subscribe(&topic).await;

    const N: usize = 4_000;
    let big = "x".repeat(8_000);
    let progress = Arc::new(AtomicUsize::new(0));
    let reader = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut got = 0;
            while got < N {
                match fast.try_next(Duration::from_secs(20)).await {
                    Some(e) if e["type"] == "taskOutput" => {
                        got += 1;
                        progress.store(got, Ordering::Relaxed);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            got
        })
    };
    // Paced so the reading client is never more than 200 events behind (a
    // busy machine must not make *it* look slow); the one that does not read
    // still falls ever further behind.
    for i in 0..N {
        while i >= progress.load(Ordering::Relaxed) + 200 && !reader.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        d.send(output(task, &format!("{i} {big}"))).await;
    }
    assert_eq!(
        reader.await.unwrap(),
        N,
        "the reading client got everything"
    );

    // The slow one now reads what was buffered, then the close reason.
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => break u16::from(frame.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, meshgate::clients::CLOSE_TOO_SLOW);
    let dropped = a
        .state()
        .metrics
        .clients_dropped_slow
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, 1);
}

#[tokio::test]
async fn only_replicas_with_clients_subscribe_to_a_topic() {
    let env = TestEnv::new().await;
    let (a, b, c) = (env.pod().await, env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let task = env.task(owner.owner_id, "pending", None).await;
    let task_channel = format!("ev:task:{task}");
    let owner_channel = format!("ev:owner:{}", owner.owner_id);

    assert_eq!(numsub(&env, &a, &task_channel).await, 0);
    let mut w1 = Watcher::open(c.addr(), Some(&owner.key), None)
        .await
        .unwrap();
    let mut w2 = Watcher::open(c.addr(), Some(&owner.key), None)
        .await
        .unwrap();
    w1.subscribe(&format!("task:{task}")).await;
    w2.subscribe(&format!("task:{task}")).await;
    w1.subscribe("owner").await;
    // Two clients, one pod: one subscription; pods a and b hold none.
    assert_eq!(numsub(&env, &a, &task_channel).await, 1);
    assert_eq!(numsub(&env, &a, &owner_channel).await, 1);
    assert_eq!(c.state().hub.channels(), 2);
    assert_eq!(a.state().hub.channels() + b.state().hub.channels(), 0);

    w1.send(json!({"type": "unsubscribe", "topic": format!("task:{task}")}))
        .await;
    assert_eq!(w1.next().await["type"], "unsubscribed");
    assert_eq!(
        numsub(&env, &a, &task_channel).await,
        1,
        "w2 still follows it"
    );
    drop(w2);
    eventually(
        Duration::from_secs(5),
        "last client gone, unsubscribed",
        || async { (numsub(&env, &a, &task_channel).await == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        numsub(&env, &a, &owner_channel).await,
        1,
        "w1 still follows owner"
    );
}

#[tokio::test]
async fn daemon_presence_is_announced_on_the_owner_topic() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut w = Watcher::open(b.addr(), Some(&owner.key), None)
        .await
        .unwrap();
    w.subscribe("owner").await;
    let d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let e = w.next().await;
    assert_eq!(
        e,
        json!({"type": "daemonConnected", "daemonId": d.id(), "hostname": "host-m1"})
    );
    let id = d.id();
    drop(d);
    let e = w.next().await;
    assert_eq!(
        e,
        json!({"type": "daemonDisconnected", "daemonId": id, "hostname": "host-m1"})
    );
}
