//! An observer of published events: subscribes to a Redis event channel the
//! way another replica would, and hands back the events in order.

use std::time::Duration;

use fred::{clients::SubscriberClient, prelude::*};
use serde_json::Value;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::harness::TestEnv;

pub struct Tap {
    client: SubscriberClient,
    rx: broadcast::Receiver<fred::types::Message>,
}

impl Tap {
    async fn open(env: &TestEnv, channel: String) -> Self {
        let config = fred::types::config::Config::from_url(&env.redis_url).unwrap();
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.broadcast_channel_capacity = 100_000)
            .build_subscriber_client()
            .unwrap();
        client.init().await.unwrap();
        let rx = client.message_rx();
        if crate::harness::is_cluster_url(&env.redis_url) {
            client.ssubscribe(channel).await.unwrap();
        } else {
            client.subscribe(channel).await.unwrap();
        }
        Self { client, rx }
    }

    /// Events of one task (`taskOutput`, `taskUpdated`, merge/PR results…).
    pub async fn task(env: &TestEnv, task_id: Uuid) -> Self {
        Self::open(env, format!("{}:ev:task:{task_id}", env.prefix)).await
    }

    /// Events of one owner (task updates, files, daemon presence).
    pub async fn owner(env: &TestEnv, owner_id: Uuid) -> Self {
        Self::open(env, format!("{}:ev:owner:{owner_id}", env.prefix)).await
    }

    /// The next event (the envelope's `event`); the envelope's `ownerId` is
    /// checked against `owner`. Fails after 5 s.
    pub async fn next(&mut self, owner: Uuid) -> Value {
        self.try_next(owner, Duration::from_secs(5))
            .await
            .expect("an event within 5 s")
    }

    pub async fn try_next(&mut self, owner: Uuid, wait: Duration) -> Option<Value> {
        let msg = tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()?
            .ok()?;
        let text = msg.value.as_string().expect("text event");
        let envelope: Value = serde_json::from_str(&text).expect("json event");
        assert_eq!(
            envelope["ownerId"],
            serde_json::json!(owner),
            "event of the right owner"
        );
        Some(envelope["event"].clone())
    }

    /// Skips events until one of `kind` arrives.
    pub async fn next_of(&mut self, owner: Uuid, kind: &str) -> Value {
        loop {
            let e = self.next(owner).await;
            if e["type"] == kind {
                return e;
            }
        }
    }

    pub async fn close(self) {
        let _ = self.client.quit().await;
    }
}
