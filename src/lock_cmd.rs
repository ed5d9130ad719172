//! `wharf lock PREFIX COMMAND`: runs COMMAND while holding the lock `PREFIX/.lock`, as
//! `consul lock` does. A session (TTL 15s, renewed every half TTL) acquires the key with
//! `?acquire=`; a contender waits on the key with blocking queries until it is free. The
//! key is watched while the command runs: if the lock is lost (the session invalidated),
//! the command is stopped. When the command ends the lock is released and the session
//! destroyed. With `-n N` (N > 1) it is a semaphore instead: at most N commands at once
//! (Consul's protocol on `PREFIX/.lock`, see `kv_lock::Semaphore`).

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use crate::cli::Client;
use crate::kv_lock::{Semaphore, Session};

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
    /// How many may hold it at once: 1 is a lock, more a semaphore.
    #[arg(short = 'n', long = "n", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    /// KV prefix of the lock; the key is PREFIX/.lock.
    prefix: String,
    /// The command to run while holding the lock.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

const SESSION_TTL: Duration = Duration::from_secs(15);

pub async fn run(client: &Client, args: LockArgs) -> Result<i32> {
    let key = format!("{}/.lock", args.prefix.trim_end_matches('/'));
    let timeout = catalog::duration::parse_go_duration(&args.timeout, true).map_err(|e| anyhow!("-timeout: {e}"))?;
    let deadline = (!timeout.is_zero()).then(|| tokio::time::Instant::now() + timeout);
    let session = Session::create(client, &args.name, SESSION_TTL, "15s").await?;
    let hold = match args.limit {
        1 => Hold::Lock(key),
        n => Hold::Semaphore(Semaphore {
            session: &session,
            prefix: args.prefix.trim_end_matches('/').to_string(),
            limit: n as usize,
        }),
    };
    let result = hold_and_run(&args, &hold, &session, deadline).await;
    session.destroy().await;
    result
}

/// What `wharf lock` holds: the lock key, or a semaphore slot.
enum Hold<'s, 'a> {
    Lock(String),
    Semaphore(Semaphore<'s, 'a>),
}

impl Hold<'_, '_> {
    async fn acquire(&self, session: &Session<'_>, deadline: Option<tokio::time::Instant>) -> Result<bool> {
        match self {
            Hold::Lock(key) => session.acquire(key, deadline).await,
            Hold::Semaphore(s) => s.acquire(deadline).await,
        }
    }

    async fn lost(&self, session: &Session<'_>) -> anyhow::Error {
        match self {
            Hold::Lock(key) => session.lost(key).await,
            Hold::Semaphore(s) => s.lost().await,
        }
    }

    async fn release(&self, session: &Session<'_>) {
        match self {
            Hold::Lock(key) => session.release(key).await,
            Hold::Semaphore(s) => s.release().await,
        }
    }

    fn name(&self) -> String {
        match self {
            Hold::Lock(key) => key.clone(),
            Hold::Semaphore(s) => format!("{}/.lock (limit {})", s.prefix, s.limit),
        }
    }
}

async fn hold_and_run(
    args: &LockArgs,
    hold: &Hold<'_, '_>,
    session: &Session<'_>,
    deadline: Option<tokio::time::Instant>,
) -> Result<i32> {
    let key = hold.name();
    let renewing = session.keep_alive();
    tokio::pin!(renewing);
    tokio::select! {
        r = hold.acquire(session, deadline) => if !r? {
            bail!("Lock acquisition failed: timed out waiting for {key}");
        },
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
    let status = tokio::select! {
        s = child.wait() => s.context("waiting for the command")?,
        e = hold.lost(session) => {
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
            hold.release(session).await;
            bail!("interrupted: the command was stopped and the lock released");
        }
    };
    hold.release(session).await;
    if args.verbose {
        eprintln!("Lock released: {key}");
    }
    Ok(if status.success() || !args.child_exit_code { 0 } else { 2 })
}
