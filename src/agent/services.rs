//! The agent as a set of services. Each one runs until the agent's stop signal and then
//! finishes its work; [`start`] spawns them all and [`Running::join`] waits for every one
//! at shutdown, each within a bound, naming any that failed or did not finish.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The agent's stop signal: `true` once shutdown began.
pub(super) type Stop = watch::Receiver<bool>;

type Run = Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>>;

/// One long-running part of the agent.
pub(super) trait Service: Send + 'static {
    /// Names the service in logs.
    fn name(&self) -> &'static str;
    /// Runs until `stop` turns true, then finishes (drains, flushes) and returns. An error
    /// is logged with the service's name; it does not stop the other services.
    fn run(self: Box<Self>, stop: Stop) -> Run;
}

/// A service made of a name and an async function of the stop signal.
pub(super) struct Task<F> {
    name: &'static str,
    body: F,
}

/// Builds a [`Service`] from a closure: `task("dns", |stop| async move { ... })`.
pub(super) fn task<F, Fut>(name: &'static str, body: F) -> Box<dyn Service>
where
    F: FnOnce(Stop) -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    Box::new(Task { name, body })
}

impl<F, Fut> Service for Task<F>
where
    F: FnOnce(Stop) -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(self: Box<Self>, stop: Stop) -> Run {
        Box::pin((self.body)(stop))
    }
}

/// The started services.
pub(super) struct Running {
    tasks: Vec<(&'static str, JoinHandle<Result<()>>)>,
}

/// Spawns every service on the current runtime. A service that fails is logged with its
/// name when it fails, not only at shutdown.
pub(super) fn start(services: Vec<Box<dyn Service>>, stop: &Stop) -> Running {
    let tasks = services
        .into_iter()
        .map(|s| {
            let name = s.name();
            let run = s.run(stop.clone());
            let task = tokio::spawn(async move {
                let result = run.await;
                if let Err(e) = &result {
                    tracing::error!(service = name, "stopped with an error: {}", crate::error_chain(e.as_ref()));
                }
                result
            });
            (name, task)
        })
        .collect();
    Running { tasks }
}

impl Running {
    /// Adds services started later (after self-registration).
    pub fn extend(&mut self, more: Running) {
        self.tasks.extend(more.tasks);
    }

    /// Waits for every service to finish (the stop signal must have been sent), all within
    /// `within` together. Returns the names of those that failed, panicked or did not finish
    /// in time (those are abandoned).
    pub async fn join(self, within: Duration) -> Vec<&'static str> {
        let deadline = tokio::time::Instant::now() + within;
        let mut bad = Vec::new();
        for (name, handle) in self.tasks {
            match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok(Ok(()))) => tracing::debug!(service = name, "stopped"),
                Ok(Ok(Err(_))) => bad.push(name),
                Ok(Err(e)) => {
                    tracing::error!(service = name, "panicked: {e}");
                    bad.push(name);
                }
                Err(_) => {
                    tracing::warn!(service = name, "did not stop within {within:?}; abandoned");
                    bad.push(name);
                }
            }
        }
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_service_runs_until_stop_and_is_joined() {
        let (tx, rx) = watch::channel(false);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut services = Vec::new();
        for name in ["a", "b"] {
            let done = done_tx.clone();
            services.push(task(name, move |mut stop| async move {
                let _ = stop.wait_for(|s| *s).await;
                let _ = done.send(name);
                Ok(())
            }));
        }
        services.push(task("fails", |_| async { Err(anyhow::anyhow!("broken")) }));
        services.push(task("hangs", |_| std::future::pending()));
        let running = start(services, &rx);
        tx.send(true).expect("receivers alive");
        let bad = running.join(Duration::from_millis(200)).await;
        assert_eq!(bad, ["fails", "hangs"]);
        let mut stopped = vec![done_rx.recv().await, done_rx.recv().await];
        stopped.sort();
        assert_eq!(stopped, [Some("a"), Some("b")]);
    }
}
