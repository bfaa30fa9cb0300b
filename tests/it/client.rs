//! A real WebSocket client standing in for a daemon.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest, http::HeaderValue, protocol::frame::coding::CloseCode, Message,
    },
    MaybeTlsStream, WebSocketStream,
};
use uuid::Uuid;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a refused upgrade answered.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub body: Value,
}

pub fn connect_url(addr: std::net::SocketAddr) -> String {
    format!("ws://{addr}/api/v1/mesh/daemons/connect")
}

/// Opens the daemon socket with `key` as `X-Api-Key` (`None`: no header).
pub async fn open(addr: std::net::SocketAddr, key: Option<&str>) -> Result<Ws, Refusal> {
    let mut req = connect_url(addr).into_client_request().unwrap();
    if let Some(key) = key {
        req.headers_mut()
            .insert("x-api-key", HeaderValue::from_str(key).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err(Refusal { status, body })
        }
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// A daemon: a socket plus the helpers tests need.
pub struct Daemon {
    pub ws: Ws,
    pub id: Option<Uuid>,
}

impl Daemon {
    /// Connects and authenticates as `machine_id`.
    pub async fn connect(addr: std::net::SocketAddr, key: &str, machine_id: &str) -> Self {
        let ws = open(addr, Some(key)).await.expect("upgrade accepted");
        let mut d = Self { ws, id: None };
        d.authenticate(key, machine_id).await;
        d
    }

    pub async fn authenticate(&mut self, key: &str, machine_id: &str) -> Uuid {
        self.send(json!({
            "type": "authenticate",
            "apiKey": key,
            "machineId": machine_id,
            "hostname": format!("host-{machine_id}"),
            "maxConcurrentTasks": 2
        }))
        .await;
        let reply = self.recv().await;
        assert_eq!(reply["type"], "authenticated", "reply: {reply}");
        let id: Uuid = reply["daemonId"].as_str().unwrap().parse().unwrap();
        self.id = Some(id);
        id
    }

    pub fn id(&self) -> Uuid {
        self.id.expect("authenticated")
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends, reporting a closed socket instead of panicking.
    pub async fn ws_send(&mut self, v: Value) -> Result<(), ()> {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .map_err(|_| ())
    }

    /// Whether the socket has been closed (by either side).
    pub fn is_closed(&self) -> bool {
        matches!(
            self.ws.get_ref(),
            MaybeTlsStream::Plain(s) if s.peer_addr().is_err()
        )
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next text frame as JSON (fails after 5 s).
    pub async fn recv(&mut self) -> Value {
        match self.next_frame(Duration::from_secs(5)).await {
            Some(Message::Text(t)) => serde_json::from_str(&t).expect("json frame"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next text frame within `wait`, or `None` if nothing came.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        match self.next_frame(wait).await {
            Some(Message::Text(t)) => Some(serde_json::from_str(&t).expect("json frame")),
            _ => None,
        }
    }

    async fn next_frame(&mut self, wait: Duration) -> Option<Message> {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(m))) => return Some(m),
                Ok(Some(Err(_))) | Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Waits for the server to close the socket; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return None,
                Err(_) => panic!("socket was not closed within 5 s"),
            }
        }
    }
}

#[allow(dead_code)]
pub fn close_code(code: CloseCode) -> u16 {
    u16::from(code)
}

/// A `sendMessage` command carrying `text` (the task does not matter to
/// routing).
pub fn message(text: &str) -> meshgate::protocol::daemon::DaemonCommand {
    meshgate::protocol::daemon::DaemonCommand::SendMessage {
        task_id: Uuid::nil(),
        message: text.into(),
    }
}

/// A daemon's `taskOutput` frame with one raw line.
pub fn output(task: Uuid, text: &str) -> Value {
    json!({"type": "taskOutput", "taskId": task, "output": text, "isPartial": false})
}

/// Whether a command sent from `pod` now reaches the daemon (waits a little
/// after a refusal so callers can retry in a loop).
pub async fn command_arrives(pod: &meshgate::Pod, d: &mut Daemon, text: &str) -> bool {
    let s = pod.state();
    let sent =
        meshgate::cluster::routing::send_command(&s.redis, &s.metrics, d.id(), &message(text))
            .await;
    if sent.is_err() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        return false;
    }
    while let Some(got) = d.try_recv(Duration::from_millis(500)).await {
        if got["message"] == text {
            return true;
        }
    }
    false
}
