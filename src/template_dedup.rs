//! consul-template's `-dedup` for `wharf template`: of all the renderers of the same
//! templates across agents, one renders; the others copy its output. Each renderer holds a
//! session and tries to take the lock `PREFIX/HASH/lock` (HASH identifies the set of
//! templates). The holder renders as usual and publishes every destination's content under
//! `PREFIX/HASH/data/N`; the others follow those keys with blocking queries and put each
//! output in place (check command and command included, as if they had rendered it). When
//! the holder stops or its session ends, another takes the lock and renders.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::cli::{Client, key_path};
use crate::kv_lock::Session;
use crate::template_runner::{self, Feed, Job, PluginTemplates, RunnerConfig, TemplateSpec};

/// consul-template's default prefix, so both never share keys by accident.
pub const DEFAULT_PREFIX: &str = "wharf-template/dedup/";
const SESSION_TTL: Duration = Duration::from_secs(15);

/// FNV-1a over the templates' contents, in order: the same templates get the same lock on
/// every agent, wherever each writes its output.
pub fn templates_hash(specs: &[TemplateSpec]) -> Result<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for spec in specs {
        let text =
            std::fs::read(&spec.source).with_context(|| format!("cannot read template {}", spec.source.display()))?;
        for b in text.iter().chain(b"\0") {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(format!("{h:016x}"))
}

pub struct Dedup {
    pub client: Client,
    pub prefix: String,
    pub specs: Vec<TemplateSpec>,
    pub plugins: PluginTemplates,
    pub config: RunnerConfig,
    /// Builds the data feed each time this renderer starts rendering.
    pub feed: Box<dyn Fn() -> Result<Feed> + Send>,
}

enum Turn {
    Stopped,
    Lead,
    Follow,
}

impl Dedup {
    fn lock_key(&self, hash: &str) -> String {
        format!("{}{hash}/lock", self.prefix)
    }

    fn data_prefix(&self, hash: &str) -> String {
        format!("{}{hash}/data/", self.prefix)
    }

    pub async fn run(self, stop: watch::Receiver<bool>) -> Result<()> {
        let hash = templates_hash(&self.specs)?;
        let session = Session::create(&self.client, "wharf template -dedup", SESSION_TTL, "0s").await?;
        let result = self.turns(&session, &hash, stop).await;
        session.destroy().await;
        result
    }

    async fn turns(&self, session: &Session<'_>, hash: &str, mut stop: watch::Receiver<bool>) -> Result<()> {
        let renewing = session.keep_alive();
        tokio::pin!(renewing);
        let mut turn = Turn::Follow;
        loop {
            turn = match turn {
                Turn::Stopped => return Ok(()),
                Turn::Follow => tokio::select! {
                    t = self.follow(session, hash) => t?,
                    e = &mut renewing => return Err(e),
                    _ = stop.changed() => Turn::Stopped,
                },
                Turn::Lead => tokio::select! {
                    t = self.lead(session, hash, stop.clone()) => t?,
                    e = &mut renewing => return Err(e),
                },
            };
        }
    }

    /// Copies the holder's output until this renderer gets the lock.
    async fn follow(&self, session: &Session<'_>, hash: &str) -> Result<Turn> {
        let prefix = self.data_prefix(hash);
        let mut index = 0u64;
        loop {
            if session.try_acquire(&self.lock_key(hash), b"").await? {
                tracing::info!("dedup: this renderer took the lock and renders");
                return Ok(Turn::Lead);
            }
            let q = format!("/v1/kv/{}?recurse&index={index}&wait=5s", key_path(&prefix));
            let (status, new_index, body) = self.client.call_indexed(Method::GET, &q, None).await?;
            index = new_index;
            if status != 200 {
                continue;
            }
            let entries: Value = serde_json::from_slice(&body).context("the agent sent invalid JSON")?;
            for e in entries.as_array().into_iter().flatten() {
                let n: Option<usize> =
                    e["Key"].as_str().and_then(|k| k.strip_prefix(&prefix)).and_then(|n| n.parse().ok());
                let (Some(n), Some(spec)) = (n, n.and_then(|n| self.specs.get(n))) else { continue };
                let bytes = match &e["Value"] {
                    Value::String(b64) => STANDARD.decode(b64).map_err(|err| anyhow!("dedup data for {n}: {err}"))?,
                    _ => Vec::new(),
                };
                let output = String::from_utf8_lossy(&bytes);
                let step = template_runner::deliver(spec, &output, &self.config).await;
                tracing::info!(destination = %spec.destination.display(), ?step, "dedup: copied the lock holder's output");
            }
        }
    }

    /// Renders while holding the lock, publishing each destination's content.
    async fn lead(&self, session: &Session<'_>, hash: &str, mut stop: watch::Receiver<bool>) -> Result<Turn> {
        let jobs = self.specs.iter().cloned().map(|s| Job::load(s, &self.plugins)).collect::<Result<Vec<_>>>()?;
        let (events, mut passes) = mpsc::unbounded_channel();
        let config = RunnerConfig { events: Some(events), ..self.config.clone() };
        let (stop_tx, stop_rx) = watch::channel(false);
        let renderer = tokio::spawn(template_runner::run(jobs, (self.feed)()?, config, stop_rx));
        let lock = self.lock_key(hash);
        let mut published: Vec<Option<Vec<u8>>> = vec![None; self.specs.len()];
        let turn = loop {
            tokio::select! {
                pass = passes.recv() => match pass {
                    Some(p) if p.all_rendered => self.publish(hash, &mut published).await?,
                    Some(_) => {}
                    None => break Turn::Stopped,
                },
                e = session.lost(&lock) => {
                    tracing::warn!("dedup: {e}; following the new holder");
                    break Turn::Follow;
                }
                _ = stop.changed() => {
                    session.release(&lock).await;
                    break Turn::Stopped;
                }
            }
        };
        let _ = stop_tx.send(true);
        renderer.await.context("the renderer task failed")??;
        Ok(turn)
    }

    async fn publish(&self, hash: &str, published: &mut [Option<Vec<u8>>]) -> Result<()> {
        for (n, spec) in self.specs.iter().enumerate() {
            let Ok(now) = std::fs::read(&spec.destination) else { continue };
            if published[n].as_ref() == Some(&now) {
                continue;
            }
            let key = format!("{}{n}", self.data_prefix(hash));
            self.client.ok(Method::PUT, &format!("/v1/kv/{}", key_path(&key)), Some(now.clone())).await?;
            published[n] = Some(now);
        }
        Ok(())
    }
}
