//! `wharf`: one binary for a Raft-replicated service catalog with Consul's HTTP API, health
//! checks (built-in and Wasm), DNS, templates and an L7 proxy.
//!
//! `main` stays synchronous: the agent builds its own runtime (Pingora will want to own
//! its runtimes too), and client commands run on a small one of their own.

mod agent;
mod cli;
mod kv_lock;
mod lock_cmd;
mod operator_cmd;
mod rejoin;
mod snapshot_cmd;
mod template_cmd;
mod template_dedup;
mod template_exec;
mod template_http;
mod template_runner;
mod wasm;
mod watch_cmd;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the proxy allocates and frees per request on
/// several threads, where glibc's arenas cost about a sixth of the proxy's CPU (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "wharf", version, about = "Service discovery, health checks and a reload-free proxy in one binary")]
struct Cli {
    /// HTTP API address of the agent to talk to (also WHARF_HTTP_ADDR or CONSUL_HTTP_ADDR;
    /// consul-template's -consul-addr is the same).
    #[arg(long = "http-addr", alias = "consul-addr", global = true, value_name = "ADDR")]
    http_addr: Option<String>,
    /// Log filter (e.g. info, debug, discovery=debug; Consul's INFO, WARN, ERR too); also
    /// RUST_LOG. Default: the config files' log_level, else info.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the agent: catalog server, HTTP API and Raft.
    Agent(Box<agent::AgentArgs>),
    /// Print wharf's version.
    Version,
    /// List the cluster's members (-detailed: every tag).
    Members {
        #[arg(long)]
        detailed: bool,
    },
    /// Tell the local agent to join the cluster of the agent at each address.
    Join {
        /// Host name or IP of an agent, optionally :port (default 8300).
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Remove a failed node, and everything registered on it, from the cluster's catalog.
    ForceLeave { node: String },
    /// Run a command while holding a lock on a KV prefix (PREFIX/.lock), as `consul lock`.
    Lock(Box<lock_cmd::LockArgs>),
    /// Show, enable or disable maintenance mode for this node or one of its services.
    Maint {
        #[arg(long)]
        enable: bool,
        #[arg(long)]
        disable: bool,
        /// A service ID on this agent (default: the whole node).
        #[arg(long)]
        service: Option<String>,
        /// Why, shown as the maintenance check's notes.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Watch a view of the catalog and run a handler with its JSON on every change.
    Watch(Box<watch_cmd::WatchArgs>),
    /// Generate a new cluster encryption key (32 random bytes, base64) for -encrypt.
    Keygen,
    /// Check config files and directories (agent settings and definitions) without starting.
    Validate {
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
    /// Read the catalog.
    Catalog {
        #[command(subcommand)]
        cmd: cli::CatalogCmd,
    },
    /// Register or deregister services on the local agent.
    Services {
        #[command(subcommand)]
        cmd: cli::ServicesCmd,
    },
    /// Read and write the key/value store.
    Kv {
        #[command(subcommand)]
        cmd: cli::KvCmd,
    },
    /// Show the agent's identity and Raft state.
    Info,
    /// Re-read --config-dir definitions on the agent.
    Reload,
    /// Make the agent leave the cluster and stop.
    Leave,
    /// Render consul-template templates from the catalog (-template SRC:DST[:CMD]).
    Template(Box<template_cmd::TemplateArgs>),
    /// Print a configuration generated from the catalog: nginx or haproxy.
    Export(template_cmd::ExportArgs),
    /// Save, restore or inspect a point-in-time copy of the whole state.
    Snapshot {
        #[command(subcommand)]
        cmd: snapshot_cmd::SnapshotCmd,
    },
    /// Cluster operations (`operator raft list-peers | remove-peer`).
    Operator {
        #[command(subcommand)]
        cmd: operator_cmd::OperatorCmd,
    },
}

/// Accepts consul's single-dash long flags (`-recurse`, `-http-addr=x`) by rewriting
/// them to clap's `--recurse`. Stops at `--`, after which arguments are taken verbatim.
pub(crate) fn normalize_args(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut verbatim = false;
    for a in args {
        if verbatim {
            out.push(a);
            continue;
        }
        if a == "--" {
            verbatim = true;
            out.push(a);
            continue;
        }
        let bytes = a.as_bytes();
        if bytes.len() > 2 && bytes[0] == b'-' && bytes[1] != b'-' && bytes[1].is_ascii_alphabetic() {
            let name_len = a[1..].find('=').unwrap_or(a.len() - 1);
            if name_len > 1 {
                out.push(format!("-{a}"));
                continue;
            }
        }
        out.push(a);
    }
    out
}

/// Starts logging to stderr at `level` (Consul's level names are accepted too).
pub(crate) fn init_logging(level: &str) {
    let level = match level.to_ascii_lowercase().as_str() {
        "err" => "error".to_string(),
        other => other.to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // hickory-server logs every DNS query at info.
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(format!("{level},openraft=warn,hickory_server=warn")))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn run_client(c: Cli) -> Result<()> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let client = cli::Client::new(cli::api_base(c.http_addr.as_deref()));
    runtime.block_on(async {
        match c.cmd {
            Cmd::Agent(_) | Cmd::Template(_) | Cmd::Export(_) | Cmd::Version | Cmd::Keygen | Cmd::Validate { .. } => {
                unreachable!("handled in main")
            }
            Cmd::Members { detailed } => cli::members(&client, detailed).await,
            Cmd::Join { addresses } => cli::join(&client, &addresses).await,
            Cmd::ForceLeave { node } => cli::force_leave(&client, &node).await,
            Cmd::Operator { cmd } => operator_cmd::run(&client, cmd).await,
            Cmd::Snapshot { cmd } => snapshot_cmd::run(&client, cmd).await,
            Cmd::Lock(args) => {
                let code = lock_cmd::run(&client, *args).await?;
                if code != 0 {
                    std::process::exit(code);
                }
                Ok(())
            }
            Cmd::Maint { enable, disable, service, reason } => {
                cli::maint(&client, enable, disable, service.as_deref(), reason.as_deref()).await
            }
            Cmd::Watch(args) => watch_cmd::run(&client, *args).await,
            Cmd::Catalog { cmd } => cli::catalog(&client, cmd).await,
            Cmd::Services { cmd } => cli::services(&client, cmd).await,
            Cmd::Kv { cmd } => cli::kv(&client, cmd).await,
            Cmd::Info => cli::info(&client).await,
            Cmd::Reload => cli::reload(&client).await,
            Cmd::Leave => cli::leave(&client).await,
        }
    })
}

/// The command line without a leading `wharf` word: the image's entrypoint is the binary,
/// and compose files written for Consul's image say `command: consul agent ...`, which
/// becomes `wharf agent ...` (Consul's image entrypoint accepts both forms too).
fn entrypoint_args() -> impl Iterator<Item = String> {
    let mut args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "wharf") {
        args.remove(1);
    }
    args.into_iter()
}

fn main() {
    let cli = Cli::parse_from(normalize_args(entrypoint_args()));
    let result = match cli.cmd {
        Cmd::Agent(args) => agent::run(*args, cli.log_level.as_deref()),
        Cmd::Version => {
            cli::version();
            Ok(())
        }
        Cmd::Keygen => {
            cli::keygen();
            Ok(())
        }
        Cmd::Validate { paths } => cli::validate(&paths),
        Cmd::Template(args) => {
            init_logging(cli.log_level.as_deref().unwrap_or("info"));
            template_cmd::run(*args, cli::api_base(cli.http_addr.as_deref()))
        }
        Cmd::Export(args) => template_cmd::export(args, cli::api_base(cli.http_addr.as_deref())),
        _ => run_client(cli),
    };
    if let Err(e) = result {
        eprintln!("Error: {}", error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

/// An error and its causes as one line, `what: why: why`, leaving out a cause whose text the
/// message before it already holds (typed errors often quote their source).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{error_chain, normalize_args};

    #[test]
    fn error_chains_name_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen on :80: {0}")]
        struct Quoting(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("starting the proxy")]
        struct Silent(#[source] std::io::Error);
        let denied = || std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        assert_eq!(error_chain(&Quoting(denied())), "cannot listen on :80: permission denied");
        assert_eq!(error_chain(&Silent(denied())), "starting the proxy: permission denied");
    }

    #[test]
    fn single_dash_long_flags_become_double_dash() {
        let args = ["wharf", "kv", "get", "-recurse", "-http-addr=127.0.0.1:1", "-x", "key", "--", "-raw"];
        let out = normalize_args(args.iter().map(|s| s.to_string()));
        assert_eq!(out, ["wharf", "kv", "get", "--recurse", "--http-addr=127.0.0.1:1", "-x", "key", "--", "-raw"]);
    }
}
