//! A daemon socket's command queue: bounded, many senders, one reader (the
//! socket loop). An empty queue holds no allocation — most daemons are idle
//! most of the time, and `tokio::sync::mpsc` would keep ~1.3 KB per socket
//! (its channel and first block) even when nothing is queued.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;

/// Why a command was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its limit: the daemon is not reading.
    Full,
    /// The socket is gone (its reader was dropped).
    Closed,
}

struct Shared {
    state: Mutex<State>,
    ready: Notify,
    limit: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a plain queue behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Sender(Arc<Shared>);

/// The socket loop's side. Dropping it closes the queue and frees what is
/// still queued.
pub struct Receiver(Arc<Shared>);

/// A queue holding at most `limit` commands.
pub fn channel(limit: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        ready: Notify::new(),
        limit: limit.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl Sender {
    /// Queues `command` unless the queue is full or closed (then it is
    /// handed back).
    pub fn try_send(&self, command: String) -> Result<(), (PushError, String)> {
        let mut state = self.0.lock();
        if state.closed {
            return Err((PushError::Closed, command));
        }
        if state.queue.len() >= self.0.limit {
            return Err((PushError::Full, command));
        }
        state.queue.push_back(command);
        drop(state);
        // One reader: a stored permit wakes its next `recv` if it is not
        // waiting right now.
        self.0.ready.notify_one();
        Ok(())
    }
}

impl Receiver {
    /// The next command, waiting for one. Cancel-safe: nothing is taken
    /// from the queue unless it is returned.
    pub async fn recv(&mut self) -> String {
        loop {
            if let Some(command) = self.try_recv() {
                return command;
            }
            self.0.ready.notified().await;
        }
    }

    /// The next command if one is queued.
    pub fn try_recv(&mut self) -> Option<String> {
        let mut state = self.0.lock();
        let command = state.queue.pop_front();
        if state.queue.is_empty() && state.queue.capacity() > 0 {
            // Give a burst's buffer back; an idle socket holds nothing.
            state.queue = VecDeque::new();
        }
        command
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.closed = true;
        state.queue = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn commands_come_out_in_order_and_the_limit_is_kept() {
        let (tx, mut rx) = channel(2);
        tx.try_send("a".into()).unwrap();
        tx.clone().try_send("b".into()).unwrap();
        assert_eq!(tx.try_send("c".into()), Err((PushError::Full, "c".into())));
        assert_eq!(rx.recv().await, "a");
        assert_eq!(rx.try_recv().as_deref(), Some("b"));
        assert_eq!(rx.try_recv(), None);
        tx.try_send("d".into()).unwrap();
        assert_eq!(rx.recv().await, "d");
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_by_a_send_from_another_task() {
        let (tx, mut rx) = channel(8);
        let reader = tokio::spawn(async move { rx.recv().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send("late".into()).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("reader woken")
            .unwrap();
        assert_eq!(got, "late");
    }

    #[tokio::test]
    async fn a_send_before_the_reader_waits_is_not_missed() {
        let (tx, mut rx) = channel(8);
        tx.try_send("early".into()).unwrap();
        // The permit from the send is consumed by this first recv; a
        // second send while nobody waits must still wake the next one.
        assert_eq!(rx.recv().await, "early");
        tx.try_send("second".into()).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got.expect("not missed"), "second");
    }

    #[test]
    fn sends_fail_as_closed_once_the_reader_is_gone() {
        let (tx, rx) = channel(8);
        tx.try_send("queued".into()).unwrap();
        drop(rx);
        assert_eq!(
            tx.try_send("after".into()),
            Err((PushError::Closed, "after".into()))
        );
    }

    #[test]
    fn an_emptied_queue_gives_its_buffer_back() {
        let (tx, mut rx) = channel(64);
        for i in 0..40 {
            tx.try_send(i.to_string()).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.0.lock().queue.capacity(), 0);
    }
}
