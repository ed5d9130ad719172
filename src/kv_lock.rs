//! A session-held lock on one KV key, as clients of Consul take it: the building blocks of
//! `wharf lock` and `wharf template -dedup` (create a TTL session, acquire with
//! `?acquire=`, wait on the key with blocking queries, watch that it is still held, renew,
//! release, destroy).

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use reqwest::Method;
use serde_json::Value;

use crate::cli::{Client, key_path};

/// A session on the local agent's node.
pub struct Session<'a> {
    client: &'a Client,
    pub id: String,
    /// How often it must be renewed (half its TTL).
    pub renew_every: Duration,
}

impl<'a> Session<'a> {
    /// Creates a session with a TTL (Go duration) and behavior `release`, with no lock
    /// delay when `lock_delay` is "0s".
    pub async fn create(client: &'a Client, name: &str, ttl: Duration, lock_delay: &str) -> Result<Session<'a>> {
        let body = serde_json::json!({
            "Name": name,
            "TTL": format!("{}s", ttl.as_secs().max(10)),
            "Behavior": "release",
            "LockDelay": lock_delay,
        });
        let out = client.ok(Method::PUT, "/v1/session/create", Some(body.to_string().into_bytes())).await?;
        let v: Value = serde_json::from_slice(&out).context("the agent sent invalid JSON")?;
        let id = v["ID"].as_str().ok_or_else(|| anyhow!("the agent returned no session ID"))?.to_string();
        Ok(Session { client, id, renew_every: ttl / 2 })
    }

    pub async fn renew(&self) -> Result<()> {
        self.client.ok(Method::PUT, &format!("/v1/session/renew/{}", self.id), None).await.map(|_| ())
    }

    /// Renews for ever; returns only when a renewal fails (the session is gone).
    pub async fn keep_alive(&self) -> anyhow::Error {
        loop {
            tokio::time::sleep(self.renew_every).await;
            if let Err(e) = self.renew().await {
                return anyhow!("the session could not be renewed: {e:#}");
            }
        }
    }

    pub async fn destroy(&self) {
        let _ = self.client.call(Method::PUT, &format!("/v1/session/destroy/{}", self.id), None).await;
    }

    /// One attempt at the lock on `key`, writing `value`.
    pub async fn try_acquire(&self, key: &str, value: &[u8]) -> Result<bool> {
        let path = format!("/v1/kv/{}?acquire={}", key_path(key), self.id);
        Ok(self.client.ok(Method::PUT, &path, Some(value.to_vec())).await?.trim_ascii() == b"true")
    }

    /// Waits for the lock on `key` until `deadline` (for ever with `None`).
    pub async fn acquire(&self, key: &str, deadline: Option<tokio::time::Instant>) -> Result<bool> {
        let mut index = 0u64;
        loop {
            if self.try_acquire(key, b"").await? {
                return Ok(true);
            }
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
                None => Duration::from_secs(60),
            };
            if wait.is_zero() {
                return Ok(false);
            }
            // Held: wait until the key changes (a release, or the holder's session ending).
            let q = format!("/v1/kv/{}?index={index}&wait={}ms", key_path(key), wait.as_millis().max(1));
            let (_, new_index, _) = self.client.call_indexed(Method::GET, &q, None).await?;
            index = new_index;
        }
    }

    /// Returns once the lock on `key` is no longer held by this session.
    pub async fn lost(&self, key: &str) -> anyhow::Error {
        let mut index = 0u64;
        loop {
            let q = format!("/v1/kv/{}?index={index}&wait=5s", key_path(key));
            match self.client.call_indexed(Method::GET, &q, None).await {
                Ok((404, _, _)) => return anyhow!("lock lost: {key} is gone"),
                Ok((_, new_index, body)) => {
                    let held = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .is_some_and(|v| v[0]["Session"].as_str() == Some(self.id.as_str()));
                    if !held {
                        return anyhow!("lock lost: {key} is no longer held by this session");
                    }
                    index = new_index;
                }
                Err(e) => return e,
            }
        }
    }

    pub async fn release(&self, key: &str) {
        let path = format!("/v1/kv/{}?release={}", key_path(key), self.id);
        if let Err(e) = self.client.ok(Method::PUT, &path, Some(Vec::new())).await {
            eprintln!("Error releasing the lock on {key}: {e:#}");
        }
    }
}
