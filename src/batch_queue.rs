//! A queue drained in batches by one flusher task at a time: what arrives
//! while a batch is in flight waits for it and goes out in the next one,
//! and a lone item goes out at once. Used for routed commands
//! ([`crate::cluster::route_batch`]) and daemon-row writes
//! ([`crate::db::daemons`]).
//!
//! The first push into an idle queue hands back a [`Turn`]; its holder
//! spawns the flusher with it and drains the queue through it. A turn that
//! ends any other way than finding the queue empty (a panic, or a task
//! dropped before it ran while the runtime shuts down) empties the queue
//! (its callers see their answer channel closed) so the next push starts
//! a new flusher instead of finding the queue "flushing" forever.

use std::sync::{Arc, Mutex, MutexGuard};

pub struct BatchQueue<T> {
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    waiting: Vec<T>,
    /// A turn is out.
    flushing: bool,
}

impl<T> Default for BatchQueue<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                waiting: Vec::new(),
                flushing: false,
            }),
        }
    }
}

impl<T> BatchQueue<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // A panic while holding the lock leaves a plain queue behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`. `Some` when no flusher is running: the caller must
    /// spawn one that drains the queue with this turn.
    pub fn push(self: &Arc<Self>, item: T) -> Option<Turn<T>> {
        let mut inner = self.lock();
        inner.waiting.push(item);
        let start = !std::mem::replace(&mut inner.flushing, true);
        start.then(|| Turn {
            queue: self.clone(),
            armed: true,
        })
    }

    /// Everything queued now, taken out (the running turn goes on).
    pub fn take_all(&self) -> Vec<T> {
        std::mem::take(&mut self.lock().waiting)
    }
}

/// The right to drain the queue; one exists at a time.
pub struct Turn<T> {
    queue: Arc<BatchQueue<T>>,
    armed: bool,
}

impl<T> Turn<T> {
    /// The oldest `max` items at most, or `None` once the queue is empty:
    /// the turn is then over and the next push starts a new flusher.
    pub fn next(&mut self, max: usize) -> Option<Vec<T>> {
        let mut inner = self.queue.lock();
        if inner.waiting.is_empty() {
            inner.flushing = false;
            self.armed = false;
            return None;
        }
        let n = inner.waiting.len().min(max.max(1));
        Some(inner.waiting.drain(..n).collect())
    }
}

impl<T> Drop for Turn<T> {
    fn drop(&mut self) {
        if self.armed {
            let mut inner = self.queue.lock();
            inner.flushing = false;
            inner.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_turn_at_a_time_drains_in_order_in_batches() {
        let q = Arc::new(BatchQueue::default());
        let mut turn = q.push(1).expect("the first push starts a flusher");
        assert!(q.push(2).is_none() && q.push(3).is_none());
        assert_eq!(turn.next(2), Some(vec![1, 2]));
        assert!(q.push(4).is_none(), "still flushing");
        assert_eq!(turn.next(2), Some(vec![3, 4]));
        assert_eq!(turn.next(2), None);
        drop(turn);
        let mut again = q.push(5).expect("a new flusher after the turn ended");
        assert_eq!(again.next(8), Some(vec![5]));
    }

    #[test]
    fn a_turn_dropped_before_it_ends_frees_the_queue() {
        let q = Arc::new(BatchQueue::default());
        let turn = q.push("never sent").unwrap();
        assert!(q.push("queued").is_none());
        drop(turn); // e.g. its task dropped before it first ran
        let mut next = q.push("later").expect("not stuck flushing");
        assert_eq!(
            next.next(8),
            Some(vec!["later"]),
            "the abandoned items are gone"
        );
    }

    #[test]
    fn take_all_leaves_the_turn_running() {
        let q = Arc::new(BatchQueue::default());
        let mut turn = q.push(1).unwrap();
        q.push(2);
        assert_eq!(q.take_all(), vec![1, 2]);
        assert!(q.push(3).is_none(), "the turn is still out");
        assert_eq!(turn.next(8), Some(vec![3]));
    }
}
