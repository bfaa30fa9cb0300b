//! The daemon socket loop: reads frames and hands them to the session,
//! writes queued commands, and ends on close, replacement, drain or kill.

use futures_util::{SinkExt, StreamExt};
use poem::web::websocket::{CloseCode, Message, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::{
    outbox, presence,
    session::{error, Session, Step},
};
use crate::{auth::Principal, protocol::daemon::DaemonCommand, state::AppState};

/// Close code sent to a socket replaced by a newer connection of its daemon.
pub const CLOSE_REPLACED: u16 = 4000;
/// Commands written before one flush, so a burst costs one syscall.
const WRITE_BATCH: usize = 64;
/// How long a closing socket may take to write what was queued for it.
const FLUSH_ON_CLOSE: std::time::Duration = std::time::Duration::from_secs(2);

/// Counts a running socket task until it is dropped (after its cleanup).
struct Alive(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Alive {
    fn new(counter: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What woke the socket loop.
enum Wake {
    Ping,
    Commands(String),
    Frame(Option<std::io::Result<Message>>),
}

/// A step's reply as JSON (`Err` if it could not be encoded: the socket
/// ends, as when a write fails), and whether the socket closes after it.
fn encode(step: Step) -> Option<(Result<String, ()>, bool)> {
    let (cmd, close) = match step {
        Step::Nothing => return None,
        Step::Reply(cmd) => (cmd, false),
        Step::ReplyAndClose(cmd) => (cmd, true),
    };
    let json = serde_json::to_string(&cmd).map_err(|e| {
        tracing::error!(error = %e, "reply not encoded");
    });
    Some((json, close))
}

/// Why the loop ended.
enum End {
    /// The daemon closed, or the socket failed.
    Gone,
    /// A newer connection of the same daemon exists.
    Replaced,
    /// The pod is draining: the daemon should reconnect elsewhere.
    Drain,
    /// We told the daemon to reconnect (e.g. the database was unavailable).
    Closed,
    /// Its command queue filled up: the daemon does not read. It should
    /// reconnect; reconciliation repairs what it missed.
    Slow,
}

/// Serves one authenticated daemon socket until it ends.
///
/// Not an `async fn`: its arguments would stay in the future, unused, for
/// the socket's whole life. The future holds only what the loop needs.
pub fn serve(
    ws: WebSocketStream,
    state: AppState,
    principal: Principal,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let alive = Alive::new(&state.lifecycle.sockets);
    // Not split: the select reads, the work after it writes, never both at
    // once (a split would put the stream behind a lock in its own Arc).
    let mut sink = ws;
    let (tx, mut rx) = outbox::channel(state.config.daemon_queue);
    let close = CancellationToken::new();
    let life = state.lifecycle.clone();
    let ping_every = state.config.daemon_ping();
    let mut session = Session::new(state, principal, tx, close.clone());
    // A daemon whose machine vanished leaves a half-open socket behind; it
    // would hold its lease (and its tasks) forever. Ping it, and give up on
    // it after three intervals without any frame.
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_seen = tokio::time::Instant::now();
    async move {
        let _alive = alive;
        let end = loop {
            // The select only says what woke the socket; the work (and its
            // awaits) comes after it, when the branch futures are gone, so the
            // task's state holds one or the other, never both.
            let wake = tokio::select! {
                biased;
                // A crash: no goodbye and no cleanup (used to simulate SIGKILL).
                _ = life.kill.cancelled() => return,
                // Registered sockets are closed by the pod in batches when it
                // drains (see `Pod::shutdown`), through the same token.
                _ = close.cancelled() => break if life.is_draining() {
                    End::Drain
                } else if session.slow.load(std::sync::atomic::Ordering::SeqCst) {
                    End::Slow
                } else {
                    End::Replaced
                },
                // Sockets that never registered just go when the pod drains.
                _ = life.drain.cancelled(), if session.registered.is_none() => break End::Drain,
                _ = ping.tick() => Wake::Ping,
                first = rx.recv() => Wake::Commands(first),
                frame = sink.next() => Wake::Frame(frame),
            };
            let outcome = match wake {
                Wake::Ping => {
                    if last_seen.elapsed() > ping_every * 3 {
                        tracing::warn!(daemon_id = ?session.registered.as_ref().map(|r| r.daemon_id), "daemon silent for three ping intervals; closing");
                        break End::Gone;
                    }
                    sink.send(Message::Ping(Vec::new())).await.map_err(|_| ())
                }
                // A daemon that takes no write for a ping interval is as good
                // as gone (and a stuck write would keep the loop from seeing
                // a close or a drain).
                Wake::Commands(first) => {
                    match tokio::time::timeout(
                        ping_every,
                        write_commands(&mut sink, first, &mut rx),
                    )
                    .await
                    {
                        Ok(written) => written,
                        Err(_) => {
                            tracing::warn!(daemon_id = ?session.registered.as_ref().map(|r| r.daemon_id), "daemon took no commands for a ping interval; closing");
                            Err(())
                        }
                    }
                }
                Wake::Frame(frame) => {
                    last_seen = tokio::time::Instant::now();
                    let step = match frame {
                        // Boxed: the largest handler's state would otherwise sit inline in
                        // every idle socket's task (bench/RESULTS.md, idle).
                        Some(Ok(Message::Text(text))) => Box::pin(session.on_text(&text)).await,
                        Some(Ok(Message::Binary(_))) => Step::Reply(error(
                            "PARSE_ERROR",
                            "frames must be text holding one JSON object",
                        )),
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Gone,
                        Some(Ok(_)) => Step::Nothing, // ping/pong: answered by the library
                    };
                    // Encoded before the write, so no command is held across it.
                    match encode(step) {
                        None => Ok(()),
                        Some((json, false)) => match json {
                            Ok(json) => sink.send(Message::Text(json)).await.map_err(|_| ()),
                            Err(()) => Err(()),
                        },
                        Some((json, true)) => {
                            if let Ok(json) = json {
                                let _ = sink.send(Message::Text(json)).await;
                            }
                            break End::Closed;
                        }
                    }
                }
            };
            if outcome.is_err() {
                break End::Gone;
            }
        };

        // The rest runs once per socket: boxed, so its state is not part of
        // every idle socket's task (bench/RESULTS.md, idle).
        Box::pin(finish(end, sink, rx, session)).await;
    }
}

/// Says goodbye as `end` asks, then cleans up the registration.
///
/// The socket leaves the pod's table first, so a command that arrives from
/// now on finds it gone and follows the daemon to its newer connection
/// ([`crate::cluster::routing`]); what was queued before is written out
/// ahead of the close frame when the daemon still reads (replaced, drained,
/// told to reconnect): each of those commands was confirmed as delivered.
async fn finish<S>(end: End, mut sink: S, mut rx: outbox::Receiver, session: Session)
where
    S: SinkExt<Message> + Unpin,
{
    session.state.conns.remove(session.conn);
    if matches!(end, End::Replaced | End::Drain | End::Closed) {
        let flush = async {
            while let Some(json) = rx.try_recv() {
                sink.feed(Message::Text(json)).await.map_err(|_| ())?;
            }
            sink.flush().await.map_err(|_| ())
        };
        // Bounded: a daemon that stopped reading does not hold the pod.
        let _ = tokio::time::timeout(FLUSH_ON_CLOSE, flush).await;
    }
    drop(rx);
    let goodbye = match end {
        End::Gone => None,
        End::Closed => Some((CloseCode::Again, "try again later")),
        End::Slow => Some((CloseCode::Again, "command queue full; reconnect")),
        End::Replaced => Some((
            CloseCode::from(CLOSE_REPLACED),
            "replaced by a newer connection",
        )),
        End::Drain => {
            let reconnect = DaemonCommand::Reconnect {
                reason: "server draining; connect again".into(),
            };
            let _ = send(&mut sink, &reconnect).await;
            Some((CloseCode::Restart, "server draining"))
        }
    };
    if let Some((code, reason)) = goodbye {
        let _ = sink.send(Message::Close(Some((code, reason.into())))).await;
    }
    presence::disconnected(&session).await;
}

async fn send<S>(sink: &mut S, cmd: &DaemonCommand) -> Result<(), ()>
where
    S: SinkExt<Message> + Unpin,
{
    let json = serde_json::to_string(cmd).map_err(|_| ())?;
    sink.send(Message::Text(json)).await.map_err(|_| ())
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn write_commands<S>(sink: &mut S, first: String, rx: &mut outbox::Receiver) -> Result<(), ()>
where
    S: SinkExt<Message> + Unpin,
{
    sink.feed(Message::Text(first)).await.map_err(|_| ())?;
    for _ in 1..WRITE_BATCH {
        match rx.try_recv() {
            Some(next) => sink.feed(Message::Text(next)).await.map_err(|_| ())?,
            None => break,
        }
    }
    sink.flush().await.map_err(|_| ())
}
