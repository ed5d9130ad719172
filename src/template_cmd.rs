//! The template commands: `wharf template` (consul-template against a wharf or Consul HTTP
//! API), `wharf export nginx|haproxy` (a built-in template rendered once to standard
//! output), and `wharf agent --template` (the same renderer reading the in-process
//! catalog). The renderer itself lives in `template_runner.rs`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use catalog::Catalog;
use clap::Args;
use templates::{Builtin, BuiltinParams, RenderOptions};
use tokio::sync::watch;

use crate::template_http::{self, HttpFeed};
use crate::template_runner::{self, Feed, Job, PluginTemplates, Quiescence, RunnerConfig, TemplateSpec};

/// How long one blocking query waits on the server before asking again.
const QUERY_WAIT: Duration = Duration::from_secs(60);

fn parse_duration(s: &str) -> Result<Duration, String> {
    catalog::duration::parse_go_duration(s, false)
}

/// Options of `wharf template` (consul-template's names, single dash accepted).
#[derive(Args, Debug)]
pub struct TemplateArgs {
    /// SOURCE:DESTINATION[:COMMAND]: render SOURCE (a consul-template template) to
    /// DESTINATION and run COMMAND (with sh) when the output changed; repeatable.
    #[arg(long = "template", value_name = "SRC:DST[:CMD]", required = true)]
    pub templates: Vec<TemplateSpec>,
    /// Render every template once (waiting for its data), then exit.
    #[arg(long)]
    pub once: bool,
    /// Print what would be written to standard output instead; run no command.
    #[arg(long)]
    pub dry: bool,
    /// Quiescence MIN[:MAX] (Go durations): render once the data has been still for MIN,
    /// at the latest MAX (default 4 × MIN) after the first change.
    #[arg(long, value_name = "MIN[:MAX]")]
    pub wait: Option<Quiescence>,
    /// Validate each new output before it replaces the old file, e.g.
    /// "nginx -t -c {{tmp}}" ({{tmp}} is the new file); on failure the old file stays.
    #[arg(long, value_name = "CMD")]
    pub check_command: Option<String>,
    /// Longest run of a check or command (Go duration).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// SOURCE=CONFIG: the config string for a Wasm template plugin (a SOURCE ending in
    /// .wasm); repeatable.
    #[arg(long, value_name = "SRC=CONFIG", value_parser = parse_plugin_config)]
    pub plugin_config: Vec<(PathBuf, String)>,
    /// KV keys under PREFIX go into the snapshot Wasm template plugins get.
    #[arg(long, value_name = "PREFIX")]
    pub plugin_kv_prefix: Option<String>,
    /// Supervise this command (run with sh) once every template is rendered; a change
    /// reloads or restarts it; its exit ends `wharf template` with its status.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Signal the -exec command gets when a template changed (default: restart it).
    #[arg(long, value_name = "SIGNAL", value_parser = crate::template_exec::parse_signal)]
    pub exec_reload_signal: Option<nix::sys::signal::Signal>,
    /// Signal that stops the -exec command.
    #[arg(long, value_name = "SIGNAL", default_value = "SIGTERM", value_parser = crate::template_exec::parse_signal)]
    pub exec_kill_signal: nix::sys::signal::Signal,
    /// Render on one agent only: renderers of the same templates elect one through a
    /// session lock; the others copy its output (consul-template's -dedup).
    #[arg(long)]
    pub dedup: bool,
    /// KV prefix of -dedup's lock and data.
    #[arg(long, value_name = "PREFIX", default_value = crate::template_dedup::DEFAULT_PREFIX)]
    pub dedup_prefix: String,
    /// How long the -exec command may take to stop before it is killed (Go duration).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub exec_kill_timeout: Duration,
}

fn parse_plugin_config(s: &str) -> Result<(PathBuf, String), String> {
    match s.split_once('=') {
        Some((src, cfg)) if !src.is_empty() => Ok((PathBuf::from(src), cfg.to_string())),
        _ => {
            Err(format!("invalid plugin config {s:?}: expected SOURCE=CONFIG, e.g. upstreams.wasm={{\"listen\":8080}}"))
        }
    }
}

fn plugin_templates(configs: &[(PathBuf, String)], kv_prefix: &Option<String>) -> PluginTemplates {
    PluginTemplates {
        configs: configs.iter().cloned().collect(),
        kv_prefix: kv_prefix.clone(),
        timeout: Duration::from_secs(5),
    }
}

/// `wharf agent` options for templates rendered from the in-process catalog.
#[derive(Args, Debug, Clone, Default)]
pub struct AgentTemplateArgs {
    /// Render a consul-template template from the catalog: SOURCE:DESTINATION[:COMMAND]
    /// (COMMAND runs with sh when the output changed); repeatable.
    #[arg(long = "template", value_name = "SRC:DST[:CMD]")]
    pub template: Vec<TemplateSpec>,
    /// Quiescence MIN[:MAX] for --template (Go durations).
    #[arg(long, value_name = "MIN[:MAX]")]
    pub template_wait: Option<Quiescence>,
    /// Validate each new --template output first ({{tmp}} is the new file); a failure
    /// keeps the old file.
    #[arg(long, value_name = "CMD")]
    pub template_check_command: Option<String>,
    /// SOURCE=CONFIG: the config string of a Wasm template plugin given to --template.
    #[arg(long, value_name = "SRC=CONFIG", value_parser = parse_plugin_config)]
    pub template_plugin_config: Vec<(PathBuf, String)>,
    /// KV keys under PREFIX go into the snapshot Wasm template plugins get.
    #[arg(long, value_name = "PREFIX")]
    pub template_plugin_kv_prefix: Option<String>,
}

/// Options of `wharf export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Which configuration: nginx or haproxy.
    #[arg(value_parser = ["nginx", "haproxy"])]
    pub kind: String,
    /// Only this service, which also becomes the default route.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Port (or ADDRESS:PORT) the generated server listens on.
    #[arg(long, value_name = "PORT", default_value = "80")]
    pub listen: String,
    /// Host names <service>.<DOMAIN> route to that service.
    #[arg(long, value_name = "DOMAIN", default_value = "localhost")]
    pub domain: String,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A stop channel that flips on SIGINT or SIGTERM.
fn stop_on_signals() -> Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// `wharf template`: consul-template against the HTTP API at `base`.
pub fn run(args: TemplateArgs, base: String) -> Result<()> {
    if args.exec.is_some() && (args.once || args.dry) {
        bail!("-exec supervises a command for as long as the templates are kept up to date: drop -once and -dry");
    }
    if args.dedup && (args.once || args.dry || args.exec.is_some()) {
        bail!("-dedup keeps one renderer for as long as the templates are kept up to date: drop -once, -dry and -exec");
    }
    let plugins = plugin_templates(&args.plugin_config, &args.plugin_kv_prefix);
    let jobs = args.templates.iter().cloned().map(|s| Job::load(s, &plugins)).collect::<Result<Vec<_>>>()?;
    if args.dedup {
        let dedup = crate::template_dedup::Dedup {
            client: crate::cli::Client::new(base.clone()),
            prefix: args.dedup_prefix.clone(),
            specs: args.templates.clone(),
            plugins,
            config: RunnerConfig {
                wait: args.wait,
                check_command: args.check_command,
                command_timeout: args.command_timeout,
                ..RunnerConfig::default()
            },
            feed: Box::new(move || Ok(Feed::Http(HttpFeed::new(base.clone(), QUERY_WAIT)?))),
        };
        drop(jobs);
        return runtime()?.block_on(async move { dedup.run(stop_on_signals()?).await });
    }
    let (events, passes) = tokio::sync::mpsc::unbounded_channel();
    let exec = args.exec.map(|command| crate::template_exec::ExecConfig {
        command,
        reload_signal: args.exec_reload_signal,
        kill_signal: args.exec_kill_signal,
        kill_timeout: args.exec_kill_timeout,
    });
    let config = RunnerConfig {
        once: args.once,
        dry: args.dry,
        wait: args.wait,
        check_command: args.check_command,
        command_timeout: args.command_timeout,
        params: Default::default(),
        events: exec.is_some().then_some(events),
    };
    let code = runtime()?.block_on(async move {
        let feed = Feed::Http(HttpFeed::new(base, QUERY_WAIT)?);
        let stop = stop_on_signals()?;
        let Some(exec) = exec else {
            return template_runner::run(jobs, feed, config, stop).await.map(|_| 0);
        };
        // The child's exit stops the renderer too.
        let (done_tx, done_rx) = watch::channel(false);
        let mut signals = stop.clone();
        tokio::spawn({
            let done_tx = done_tx.clone();
            async move {
                let _ = signals.changed().await;
                let _ = done_tx.send(true);
            }
        });
        let renderer = tokio::spawn(template_runner::run(jobs, feed, config, done_rx.clone()));
        let code = crate::template_exec::supervise(exec, passes, done_rx).await;
        let _ = done_tx.send(true);
        renderer.await.context("the renderer task failed")??;
        code
    })?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// `wharf export nginx|haproxy`: the built-in template rendered once to standard output.
pub fn export(args: ExportArgs, base: String) -> Result<()> {
    let builtin = Builtin::from_name(&args.kind).with_context(|| format!("unknown export {:?}", args.kind))?;
    let template = builtin.template().map_err(|e| anyhow::anyhow!("built-in template: {e}"))?;
    let params = BuiltinParams { listen: args.listen, service: args.service, domain: args.domain };
    let opts = RenderOptions { params: params.to_dot(), ..RenderOptions::default() };
    runtime()?.block_on(async move {
        let feed = HttpFeed::new(base, QUERY_WAIT)?;
        // Each pass fetches what the previous one found missing (services, then each
        // service's instances).
        for _ in 0..8 {
            let r = template.render(feed.snapshot(), &opts)?;
            if r.is_complete() {
                print!("{}", r.output);
                return Ok(());
            }
            template_http::fetch_all(&feed, &r.missing).await?;
        }
        bail!("the catalog kept changing while exporting: run the export again")
    })
}

/// Checks `wharf agent --template` settings at start-up, so a bad template fails loudly.
pub fn check_agent_templates(args: &AgentTemplateArgs) -> Result<()> {
    let plugins = plugin_templates(&args.template_plugin_config, &args.template_plugin_kv_prefix);
    for spec in &args.template {
        Job::load(spec.clone(), &plugins)?;
    }
    Ok(())
}

/// Loads the templates of `wharf agent --template` into a renderer that reads the
/// in-process catalog; `None` without templates.
pub fn in_agent(
    args: &AgentTemplateArgs,
    catalog: &Catalog,
    node: &str,
    datacenter: &str,
) -> Result<Option<AgentTemplates>> {
    if args.template.is_empty() {
        return Ok(None);
    }
    let plugins = plugin_templates(&args.template_plugin_config, &args.template_plugin_kv_prefix);
    let jobs = args.template.iter().cloned().map(|s| Job::load(s, &plugins)).collect::<Result<Vec<_>>>()?;
    let config = RunnerConfig {
        wait: args.template_wait,
        check_command: args.template_check_command.clone(),
        command_timeout: Duration::from_secs(60),
        ..RunnerConfig::default()
    };
    let feed = Feed::Catalog { rx: catalog.subscribe(), node: node.to_string(), datacenter: datacenter.to_string() };
    Ok(Some(AgentTemplates { jobs, feed, config }))
}

/// The agent's template renderer, loaded and ready to run.
pub struct AgentTemplates {
    jobs: Vec<Job>,
    feed: Feed,
    config: RunnerConfig,
}

impl AgentTemplates {
    /// Renders on every catalog change until `stop`.
    pub async fn run(self, stop: watch::Receiver<bool>) -> Result<()> {
        tracing::info!(templates = self.jobs.len(), "template renderer started");
        template_runner::run(self.jobs, self.feed, self.config, stop).await
    }
}
