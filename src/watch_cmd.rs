//! `wharf watch -type TYPE ... [HANDLER]`: follows one view of the catalog with blocking
//! queries, as `consul watch` does, and runs HANDLER (through `/bin/sh -c`) with Consul's
//! JSON for that view on its standard input each time the view changes (and once at
//! start). Without a handler the current JSON is printed once.

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use reqwest::Method;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::cli::{Client, key_path};

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// key, keyprefix, services, nodes, service or checks.
    #[arg(long = "type")]
    kind: String,
    /// With -type key.
    #[arg(long)]
    key: Option<String>,
    /// With -type keyprefix.
    #[arg(long)]
    prefix: Option<String>,
    /// With -type service (and optionally checks).
    #[arg(long)]
    service: Option<String>,
    /// With -type service: only instances with this tag (repeatable).
    #[arg(long)]
    tag: Vec<String>,
    /// With -type service: only passing instances.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    passingonly: bool,
    /// With -type checks: only checks in this state (any, passing, warning, critical).
    #[arg(long)]
    state: Option<String>,
    /// The handler command; its standard input gets the JSON.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    handler: Vec<String>,
}

/// The HTTP path of a watch, and whether its answer is one KV entry (sent unwrapped).
fn query(a: &WatchArgs) -> Result<(String, bool)> {
    let need = |v: &Option<String>, flag: &str| {
        v.clone().filter(|s| !s.is_empty()).ok_or_else(|| anyhow!("-type {} needs {flag}", a.kind))
    };
    Ok(match a.kind.as_str() {
        "key" => (format!("/v1/kv/{}", key_path(&need(&a.key, "-key")?)), true),
        "keyprefix" => (format!("/v1/kv/{}?recurse", key_path(&need(&a.prefix, "-prefix")?)), false),
        "services" => ("/v1/catalog/services".into(), false),
        "nodes" => ("/v1/catalog/nodes".into(), false),
        "service" => {
            let mut p = format!("/v1/health/service/{}?", key_path(&need(&a.service, "-service")?));
            for t in &a.tag {
                p.push_str(&format!("tag={}&", key_path(t)));
            }
            if a.passingonly {
                p.push_str("passing&");
            }
            (p.trim_end_matches(['?', '&']).to_string(), false)
        }
        "checks" => match (&a.service, &a.state) {
            (Some(_), Some(_)) => bail!("-type checks takes -service or -state, not both"),
            (Some(s), None) => (format!("/v1/health/checks/{}", key_path(s)), false),
            (None, state) => (format!("/v1/health/state/{}", state.as_deref().unwrap_or("any")), false),
        },
        other => bail!("unknown watch type {other:?}: use key, keyprefix, services, nodes, service or checks"),
    })
}

async fn fetch(client: &Client, path: &str, single: bool, index: u64) -> Result<(u64, Value)> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, new_index, body) =
        client.call_indexed(Method::GET, &format!("{path}{sep}index={index}"), None).await?;
    let value = match status {
        // A missing key or empty prefix: Consul's watch hands the handler null.
        404 => Value::Null,
        200 => {
            let v: Value = serde_json::from_slice(&body).context("the agent sent invalid JSON")?;
            if single { v.get(0).cloned().unwrap_or(Value::Null) } else { v }
        }
        _ => bail!("{} (HTTP {status})", String::from_utf8_lossy(&body).trim()),
    };
    Ok((new_index, value))
}

async fn run_handler(handler: &str, value: &Value, index: u64) -> Result<()> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .args(["-c", handler])
        .env("CONSUL_INDEX", index.to_string())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start the handler {handler:?}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A handler that does not read its input is fine.
        let _ = stdin.write_all(value.to_string().as_bytes()).await;
    }
    let status = child.wait().await?;
    if !status.success() {
        eprintln!("Error: the handler {handler:?} exited with {status}");
    }
    Ok(())
}

pub async fn run(client: &Client, args: WatchArgs) -> Result<()> {
    let (path, single) = query(&args)?;
    let (mut index, mut last) = fetch(client, &path, single, 0).await?;
    if args.handler.is_empty() {
        println!("{}", serde_json::to_string_pretty(&last)?);
        return Ok(());
    }
    let handler = args.handler.join(" ");
    run_handler(&handler, &last, index).await?;
    loop {
        let (new_index, value) = tokio::select! {
            r = fetch(client, &path, single, index) => r?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        // An index that went backwards (a restored snapshot) starts over, as Consul does.
        let changed = new_index != index && value != last;
        index = if new_index < index { 0 } else { new_index };
        if changed {
            last = value;
            run_handler(&handler, &last, new_index).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        w: WatchArgs,
    }

    fn path(line: &str) -> Result<String> {
        let words = std::iter::once("wharf".to_string()).chain(line.split_whitespace().map(str::to_string));
        query(&T::parse_from(crate::normalize_args(words)).w).map(|(p, _)| p)
    }

    #[test]
    fn each_type_reads_its_endpoint() {
        assert_eq!(path("-type=key -key=app/color").expect("ok"), "/v1/kv/app/color");
        assert_eq!(path("-type=keyprefix -prefix=app/").expect("ok"), "/v1/kv/app/?recurse");
        assert_eq!(
            path("-type=service -service=web -tag=v1 -passingonly").expect("ok"),
            "/v1/health/service/web?tag=v1&passing"
        );
        assert_eq!(path("-type=checks -state=critical").expect("ok"), "/v1/health/state/critical");
        assert_eq!(path("-type=nodes handler.sh").expect("ok"), "/v1/catalog/nodes");
        assert!(path("-type=key").expect_err("no key").to_string().contains("-key"));
        assert!(path("-type=event").is_err());
    }
}
