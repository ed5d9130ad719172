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
    pub(crate) client: &'a Client,
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

/// Consul's semaphore protocol on a KV prefix, held by a session: each contender holds its
/// own key `PREFIX/SESSION` (acquired with the session, so it goes when the session does);
/// `PREFIX/.lock` holds `{"Limit": N, "Holders": {SESSION: true}}`, changed only with
/// `?cas=`. A slot is taken by adding oneself to the holders while fewer than N live
/// contenders hold one.
pub struct Semaphore<'s, 'a> {
    pub session: &'s Session<'a>,
    pub prefix: String,
    pub limit: usize,
}

impl Semaphore<'_, '_> {
    fn lock_key(&self) -> String {
        format!("{}/.lock", self.prefix)
    }

    fn contender_key(&self) -> String {
        format!("{}/{}", self.prefix, self.session.id)
    }

    /// The prefix's entries: (`.lock`'s ModifyIndex or 0, its holders, the live contenders)
    /// and the blocking index.
    async fn read(&self, index: u64) -> Result<(u64, Vec<String>, Vec<String>, u64)> {
        let q = format!("/v1/kv/{}/?recurse&index={index}&wait=5s", key_path(&self.prefix));
        let (status, new_index, body) = self.session.client.call_indexed(Method::GET, &q, None).await?;
        let mut lock_index = 0;
        let mut holders = Vec::new();
        let mut live = Vec::new();
        if status == 200 {
            let entries: Value = serde_json::from_slice(&body).context("the agent sent invalid JSON")?;
            for e in entries.as_array().into_iter().flatten() {
                let key = e["Key"].as_str().unwrap_or_default();
                if key == self.lock_key() {
                    lock_index = e["ModifyIndex"].as_u64().unwrap_or(0);
                    let raw = e["Value"]
                        .as_str()
                        .and_then(|v| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, v).ok());
                    let doc: Value = raw.and_then(|r| serde_json::from_slice(&r).ok()).unwrap_or(Value::Null);
                    if let Some(limit) = doc["Limit"].as_u64()
                        && limit as usize != self.limit
                    {
                        anyhow::bail!(
                            "semaphore limit conflict: {} holds limit {limit}, this one {}",
                            self.prefix,
                            self.limit
                        );
                    }
                    holders = doc["Holders"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
                } else if let Some(sid) = key.strip_prefix(&format!("{}/", self.prefix))
                    && e["Session"].as_str() == Some(sid)
                {
                    live.push(sid.to_string());
                }
            }
        }
        Ok((lock_index, holders, live, new_index))
    }

    fn lock_doc(&self, holders: &[String]) -> Vec<u8> {
        let map: serde_json::Map<String, Value> = holders.iter().map(|h| (h.clone(), Value::Bool(true))).collect();
        serde_json::json!({"Limit": self.limit, "Holders": map}).to_string().into_bytes()
    }

    async fn cas(&self, lock_index: u64, holders: &[String]) -> Result<bool> {
        let path = format!("/v1/kv/{}?cas={lock_index}", key_path(&self.lock_key()));
        Ok(self.session.client.ok(Method::PUT, &path, Some(self.lock_doc(holders))).await?.trim_ascii() == b"true")
    }

    /// Takes a slot, waiting until `deadline` (for ever with `None`).
    pub async fn acquire(&self, deadline: Option<tokio::time::Instant>) -> Result<bool> {
        if !self.session.try_acquire(&self.contender_key(), b"").await? {
            anyhow::bail!("cannot hold the contender key {}", self.contender_key());
        }
        let mut index = 0;
        loop {
            let (lock_index, holders, live, new_index) = self.read(index).await?;
            // Holders whose contender key is gone (their session ended) free their slot.
            let mut alive: Vec<String> = holders.into_iter().filter(|h| live.contains(h)).collect();
            if alive.len() < self.limit {
                alive.push(self.session.id.clone());
                if self.cas(lock_index, &alive).await? {
                    return Ok(true);
                }
                index = 0;
                continue;
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Ok(false);
            }
            index = new_index;
        }
    }

    /// Returns once this session no longer holds a slot.
    pub async fn lost(&self) -> anyhow::Error {
        let mut index = 0;
        loop {
            match self.read(index).await {
                Ok((_, holders, live, new_index)) => {
                    let me = &self.session.id;
                    if !holders.contains(me) || !live.contains(me) {
                        return anyhow!("semaphore slot lost on {}", self.prefix);
                    }
                    index = new_index;
                }
                Err(e) => return e,
            }
        }
    }

    /// Gives the slot back and deletes the contender key.
    pub async fn release(&self) {
        for _ in 0..20 {
            let Ok((lock_index, holders, _, _)) = self.read(0).await else { break };
            let rest: Vec<String> = holders.into_iter().filter(|h| *h != self.session.id).collect();
            if self.cas(lock_index, &rest).await.unwrap_or(false) {
                break;
            }
        }
        let path = format!("/v1/kv/{}", key_path(&self.contender_key()));
        let _ = self.session.client.call(Method::DELETE, &path, None).await;
    }
}
