//! consul-template's `-exec` mode for `wharf template`: once every template has been
//! rendered, the command starts as a child; when a template's output changes, the child
//! gets `-exec-reload-signal`, or, without one, is stopped with `-exec-kill-signal` (and
//! killed after `-exec-kill-timeout`) and started again. When the child exits by itself,
//! `wharf template` exits with its status; a signal to `wharf template` goes to the child.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use crate::template_runner::Pass;

/// How the child is run.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    pub command: String,
    pub reload_signal: Option<Signal>,
    pub kill_signal: Signal,
    pub kill_timeout: Duration,
}

/// A signal by its name (`SIGHUP`, `HUP` or `hup`).
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let upper = s.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map_err(|_| format!("unknown signal {s:?}: use a name such as SIGHUP or SIGTERM"))
}

fn start(cfg: &ExecConfig) -> Result<Child> {
    Command::new("/bin/sh")
        .args(["-c", &cfg.command])
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start -exec command {:?}", cfg.command))
}

fn signal(child: &Child, sig: Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
}

/// Stops the child with the kill signal, then SIGKILL after the timeout.
async fn stop(child: &mut Child, cfg: &ExecConfig) {
    signal(child, cfg.kill_signal);
    if tokio::time::timeout(cfg.kill_timeout, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Supervises the child from the renderer's passes until it exits (its status is the
/// result) or `stop_rx` flips.
pub async fn supervise(
    cfg: ExecConfig,
    mut passes: mpsc::UnboundedReceiver<Pass>,
    mut stop_rx: watch::Receiver<bool>,
) -> Result<i32> {
    // Wait for every template's first render.
    loop {
        tokio::select! {
            p = passes.recv() => match p {
                Some(p) if p.all_rendered => break,
                Some(_) => {}
                None => bail!("the renderer stopped before every template was rendered"),
            },
            _ = stop_rx.changed() => return Ok(0),
        }
    }
    use tokio::signal::unix::{SignalKind, signal as listen};
    let listen_for =
        |sig: Signal| listen(SignalKind::from_raw(sig as i32)).with_context(|| format!("cannot listen for {sig}"));
    let (mut hup, mut usr1, mut usr2) =
        (listen_for(Signal::SIGHUP)?, listen_for(Signal::SIGUSR1)?, listen_for(Signal::SIGUSR2)?);
    let mut child = start(&cfg)?;
    loop {
        let forward = |sig: Signal, child: &Child| {
            tracing::info!(?sig, "passing the signal on to the -exec command");
            signal(child, sig);
        };
        tokio::select! {
            Some(()) = hup.recv() => forward(Signal::SIGHUP, &child),
            Some(()) = usr1.recv() => forward(Signal::SIGUSR1, &child),
            Some(()) = usr2.recv() => forward(Signal::SIGUSR2, &child),
            status = child.wait() => {
                let status = status.context("waiting for the -exec command")?;
                tracing::info!(%status, "the -exec command exited");
                return Ok(status.code().unwrap_or(1));
            }
            p = passes.recv() => match p {
                Some(Pass { written: true, .. }) => match cfg.reload_signal {
                    Some(sig) => {
                        tracing::info!(?sig, "template changed: signalling the -exec command");
                        signal(&child, sig);
                    }
                    None => {
                        tracing::info!("template changed: restarting the -exec command");
                        stop(&mut child, &cfg).await;
                        child = start(&cfg)?;
                    }
                },
                Some(_) => {}
                None => {
                    stop(&mut child, &cfg).await;
                    return Ok(0);
                }
            },
            _ = stop_rx.changed() => {
                stop(&mut child, &cfg).await;
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("SIGHUP"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("hup"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("USR1"), Ok(Signal::SIGUSR1));
        assert!(parse_signal("SIGNOPE").is_err());
    }
}
