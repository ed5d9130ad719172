//! `wharf lock PREFIX COMMAND`: runs COMMAND while holding the lock `PREFIX/.lock`, as
//! `consul lock` does. A session (TTL 15s, renewed every half TTL) acquires the key with
//! `?acquire=`; a contender waits on the key with blocking queries until it is free. The
//! key is watched while the command runs: if the lock is lost (the session invalidated),
//! the command is stopped. When the command ends the lock is released and the session
//! destroyed.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use reqwest::Method;
use serde_json::Value;

use crate::cli::{Client, key_path};

#[derive(Args, Debug)]
pub struct LockArgs {
    /// Name of the session (default "wharf lock").
    #[arg(long, default_value = "wharf lock")]
    name: String,
    /// Give up acquiring the lock after this long (Go duration; 0 = wait for ever).
    #[arg(long, default_value = "0s")]
    timeout: String,
    /// Exit 2 when the command fails (consul lock's -child-exit-code).
    #[arg(long)]
    child_exit_code: bool,
    /// Run COMMAND through `/bin/sh -c` (the default, as consul lock does).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    shell: bool,
    /// Say what is happening on stderr.
    #[arg(long)]
    verbose: bool,
    /// KV prefix of the lock; the key is PREFIX/.lock.
    prefix: String,
    /// The command to run while holding the lock.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

const SESSION_TTL: &str = "15s";
const RENEW_EVERY: Duration = Duration::from_millis(7_500);

struct Session<'a> {
    client: &'a Client,
    id: String,
}

impl Session<'_> {
    async fn destroy(&self) {
        let _ = self.client.call(Method::PUT, &format!("/v1/session/destroy/{}", self.id), None).await;
    }
}

async fn create_session<'a>(client: &'a Client, name: &str) -> Result<Session<'a>> {
    let body = serde_json::json!({"Name": name, "TTL": SESSION_TTL, "Behavior": "release"});
    let out = client.ok(Method::PUT, "/v1/session/create", Some(body.to_string().into_bytes())).await?;
    let v: Value = serde_json::from_slice(&out).context("the agent sent invalid JSON")?;
    let id = v["ID"].as_str().ok_or_else(|| anyhow!("the agent returned no session ID"))?.to_string();
    Ok(Session { client, id })
}

/// Takes the lock, waiting for it as long as `deadline` allows.
async fn acquire(client: &Client, key: &str, session: &str, deadline: Option<tokio::time::Instant>) -> Result<()> {
    let path = format!("/v1/kv/{}", key_path(key));
    let mut index = 0u64;
    loop {
        let out = client.ok(Method::PUT, &format!("{path}?acquire={session}"), Some(Vec::new())).await?;
        if out.trim_ascii() == b"true" {
            return Ok(());
        }
        // Held: wait until the key changes (a release, or the holder's session expiring).
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
            None => Duration::from_secs(60),
        };
        if wait.is_zero() {
            bail!("Lock acquisition failed: timed out waiting for {key}");
        }
        let q = format!("{path}?index={index}&wait={}ms", wait.as_millis().max(1));
        let (_, new_index, _) = client.call_indexed(Method::GET, &q, None).await?;
        index = new_index;
    }
}

/// Whether `session` still holds `key` (blocks up to `wait` for a change after `index`).
async fn still_held(client: &Client, key: &str, session: &str, index: u64) -> Result<(bool, u64)> {
    let q = format!("/v1/kv/{}?index={index}&wait=5s", key_path(key));
    let (status, new_index, body) = client.call_indexed(Method::GET, &q, None).await?;
    if status == 404 {
        return Ok((false, new_index));
    }
    let v: Value = serde_json::from_slice(&body).context("the agent sent invalid JSON")?;
    Ok((v[0]["Session"].as_str() == Some(session), new_index))
}

pub async fn run(client: &Client, args: LockArgs) -> Result<i32> {
    let key = format!("{}/.lock", args.prefix.trim_end_matches('/'));
    let timeout = discovery::duration::parse_go_duration(&args.timeout, true).map_err(|e| anyhow!("-timeout: {e}"))?;
    let deadline = (!timeout.is_zero()).then(|| tokio::time::Instant::now() + timeout);
    let session = create_session(client, &args.name).await?;
    let result = hold_and_run(client, &args, &key, &session.id, deadline).await;
    session.destroy().await;
    result
}

async fn hold_and_run(
    client: &Client,
    args: &LockArgs,
    key: &str,
    session: &str,
    deadline: Option<tokio::time::Instant>,
) -> Result<i32> {
    let renewing = async {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            if let Err(e) = client.ok(Method::PUT, &format!("/v1/session/renew/{session}"), None).await {
                return anyhow!("the lock's session could not be renewed: {e:#}");
            }
        }
    };
    tokio::pin!(renewing);
    tokio::select! {
        r = acquire(client, key, session, deadline) => r?,
        e = &mut renewing => return Err(e),
    }
    if args.verbose {
        eprintln!("Lock acquired: {key}");
    }
    let mut child = if args.shell {
        tokio::process::Command::new("/bin/sh").arg("-c").arg(args.command.join(" ")).spawn()
    } else {
        tokio::process::Command::new(&args.command[0]).args(&args.command[1..]).spawn()
    }
    .context("cannot start the command")?;
    let monitor = async {
        let mut index = 0;
        loop {
            match still_held(client, key, session, index).await {
                Ok((true, i)) => index = i,
                Ok((false, _)) => return anyhow!("Lock lost: {key} is no longer held by this session"),
                Err(e) => return e,
            }
        }
    };
    let status = tokio::select! {
        s = child.wait() => s.context("waiting for the command")?,
        e = monitor => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(e);
        }
        e = &mut renewing => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(e);
        }
        _ = tokio::signal::ctrl_c() => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            release(client, key, session).await;
            bail!("interrupted: the command was stopped and the lock released");
        }
    };
    release(client, key, session).await;
    if args.verbose {
        eprintln!("Lock released: {key}");
    }
    Ok(if status.success() || !args.child_exit_code { 0 } else { 2 })
}

async fn release(client: &Client, key: &str, session: &str) {
    let path = format!("/v1/kv/{}?release={session}", key_path(key));
    if let Err(e) = client.ok(Method::PUT, &path, Some(Vec::new())).await {
        eprintln!("Error releasing the lock on {key}: {e:#}");
    }
}
