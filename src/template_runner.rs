//! The template renderer service shared by `wharf template` and `wharf agent --template`:
//! waits for the data a template used to change (with `-wait` quiescence), re-renders,
//! and when the output differs writes it atomically (temp file + rename, permissions
//! kept), after an optional check command on the temp file, then runs the template's
//! command. A failing check keeps the old file; a failing command is logged and the
//! renderer carries on.
//!
//! Data comes from a [`Feed`]: the agent's in-process catalog, or the HTTP API with
//! blocking queries (`template_http.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use catalog::state::CatalogState;
use templates::{CatalogData, DataValue, Dependency, RenderOptions, Template, TemplateData};
use tokio::sync::watch;

use crate::template_http::HttpFeed;

/// One `-template "src:dst[:command]"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSpec {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub command: Option<String>,
}

impl std::str::FromStr for TemplateSpec {
    type Err = String;

    /// consul-template's form: the first two colons separate source, destination and
    /// command; the command may contain colons.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, ':');
        let source = parts.next().unwrap_or_default().trim();
        let destination = parts.next().unwrap_or_default().trim();
        if source.is_empty() || destination.is_empty() {
            return Err(format!(
                "invalid template {s:?}: expected SOURCE:DESTINATION[:COMMAND], e.g. nginx.ctmpl:/etc/nginx/nginx.conf:\"nginx -s reload\""
            ));
        }
        let command = parts.next().map(str::trim).filter(|c| !c.is_empty()).map(str::to_string);
        Ok(TemplateSpec { source: source.into(), destination: destination.into(), command })
    }
}

/// `-wait min[:max]`: after a change, render once nothing changed for `min`, or `max` after
/// the first change at the latest (default 4 × min, as consul-template).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quiescence {
    pub min: Duration,
    pub max: Duration,
}

impl std::str::FromStr for Quiescence {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |d: &str| catalog::duration::parse_go_duration(d.trim(), false);
        let (min, max) = match s.split_once(':') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let min = parse(s)?;
                (min, min * 4)
            }
        };
        if max < min {
            return Err(format!("invalid wait {s:?}: the maximum must not be below the minimum"));
        }
        Ok(Quiescence { min, max })
    }
}

/// How the renderer runs.
#[derive(Clone, Debug, Default)]
pub struct RunnerConfig {
    /// Render each template once (when its data is complete), then return.
    pub once: bool,
    /// Print to standard output instead of writing files; run no command.
    pub dry: bool,
    pub wait: Option<Quiescence>,
    /// Run on the temp file before it replaces the destination; `{{tmp}}` is its path.
    pub check_command: Option<String>,
    /// Limit for a check or command run.
    pub command_timeout: Duration,
    /// Values for `.` of every template (the built-in templates' settings).
    pub params: BTreeMap<String, String>,
    /// Told after every pass: whether every template has been rendered, and whether one
    /// was written in this pass (`-exec` supervises its child from these).
    pub events: Option<tokio::sync::mpsc::UnboundedSender<Pass>>,
}

/// What one pass over the templates did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    pub all_rendered: bool,
    pub written: bool,
}

/// Where the data comes from.
pub enum Feed {
    /// The agent's in-process catalog.
    Catalog { rx: watch::Receiver<Arc<CatalogState>>, node: String, datacenter: String },
    /// A wharf (or Consul) HTTP API.
    Http(HttpFeed),
}

impl Feed {
    fn snapshot(&mut self) -> Arc<dyn TemplateData> {
        match self {
            Feed::Catalog { rx, node, datacenter } => {
                let state = rx.borrow_and_update().clone();
                Arc::new(CatalogData::new(state, node, datacenter))
            }
            Feed::Http(h) => h.snapshot(),
        }
    }

    fn want(&mut self, deps: &BTreeSet<Dependency>) {
        if let Feed::Http(h) = self {
            h.want(deps);
        }
    }

    /// Waits until the data may have changed; `false` when the source is gone.
    async fn changed(&mut self) -> bool {
        match self {
            Feed::Catalog { rx, .. } => rx.changed().await.is_ok(),
            Feed::Http(h) => {
                h.changed().await;
                true
            }
        }
    }
}

/// How `.wasm` template sources (Wasm template plugins) are run.
#[derive(Clone, Debug, Default)]
pub struct PluginTemplates {
    /// The config string handed to each plugin, by its source path as given.
    pub configs: BTreeMap<PathBuf, String>,
    /// KV keys under this prefix are part of the snapshot a plugin gets (none when unset).
    pub kv_prefix: Option<String>,
    /// Longest a plugin may run per render.
    pub timeout: Duration,
}

/// A template plugin: `render(snapshot, config)` of a component built for the `template`
/// world of plugins/wit/plugin.wit.
struct WasmTemplate {
    host: Arc<plugins::PluginHost>,
    module: String,
    config: String,
    kv_prefix: Option<String>,
    timeout: Duration,
}

/// What a job renders: consul-template text or a Wasm template plugin.
enum Source {
    Text(Template),
    Wasm(WasmTemplate),
}

/// One template being kept up to date.
pub struct Job {
    pub spec: TemplateSpec,
    template: Source,
    /// The answers to the dependencies the last render used (`None` before the first).
    seen: Option<BTreeMap<Dependency, Option<DataValue>>>,
    used: BTreeSet<Dependency>,
    /// The last render was complete and is on disk (or printed).
    done: bool,
    /// What a `-dry` run printed last.
    printed: Option<String>,
    /// Why the last render failed (fatal with `-once`, as in consul-template).
    error: Option<String>,
}

impl Job {
    /// Reads and parses the template of `spec`; syntax errors name file, line and column.
    /// A source ending in `.wasm` is a template plugin, compiled here so a bad one fails
    /// at start-up.
    pub fn load(spec: TemplateSpec, plugins: &PluginTemplates) -> Result<Job> {
        if spec.source.extension().is_some_and(|e| e == "wasm") {
            return Job::load_plugin(spec, plugins);
        }
        let text = std::fs::read_to_string(&spec.source)
            .with_context(|| format!("cannot read template {}: check the path", spec.source.display()))?;
        let template = Template::parse(&spec.source.display().to_string(), &text)
            .map_err(|e| anyhow::anyhow!("template syntax error at {e}"))?;
        Ok(Job::new(spec, template))
    }

    pub fn new(spec: TemplateSpec, template: Template) -> Job {
        Job::with_source(spec, Source::Text(template))
    }

    fn with_source(spec: TemplateSpec, template: Source) -> Job {
        Job { spec, template, seen: None, used: BTreeSet::new(), done: false, printed: None, error: None }
    }

    fn load_plugin(spec: TemplateSpec, opts: &PluginTemplates) -> Result<Job> {
        let src = &spec.source;
        let module = src.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = match src.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // One render at a time per template: a small pool.
        let mut cfg = plugins::PluginConfig::new(dir);
        cfg.max_concurrent = 2;
        let host = plugins::PluginHost::new(cfg).with_context(|| format!("template plugin {}", src.display()))?;
        host.prepare_template(&module).map_err(|e| anyhow::anyhow!("template plugin {}: {e}", src.display()))?;
        let wasm = WasmTemplate {
            host: Arc::new(host),
            module,
            config: opts.configs.get(src).cloned().unwrap_or_default(),
            kv_prefix: opts.kv_prefix.clone(),
            timeout: if opts.timeout.is_zero() { Duration::from_secs(5) } else { opts.timeout },
        };
        Ok(Job::with_source(spec, Source::Wasm(wasm)))
    }
}

/// The catalog snapshot a template plugin gets: every service with its passing instances,
/// and the KV pairs under the prefix. Also returns what it read, and whether the source
/// knew all of it (an HTTP feed learns what to fetch from the first pass).
fn plugin_snapshot(
    data: &dyn TemplateData,
    kv_prefix: Option<&str>,
) -> (plugins::Snapshot, BTreeSet<Dependency>, bool) {
    let mut used = BTreeSet::new();
    let mut complete = true;
    let mut snapshot = plugins::Snapshot { services: Vec::new(), kv: Vec::new() };
    let services_dep = Dependency::CatalogServices { dc: None };
    used.insert(services_dep.clone());
    match data.fetch(&services_dep) {
        Some(DataValue::CatalogServices(list)) => {
            for s in list {
                let dep = Dependency::HealthService { name: s.name.clone(), tag: None, dc: None };
                used.insert(dep.clone());
                let instances = match data.fetch(&dep) {
                    Some(DataValue::HealthService(entries)) => entries
                        .into_iter()
                        .filter(|e| e.status == "passing")
                        .map(|e| plugins::Instance {
                            service: e.name,
                            id: e.id,
                            address: if e.address.is_empty() { e.node_address } else { e.address },
                            port: e.port,
                            tags: e.tags,
                            meta: e.service_meta.into_iter().collect(),
                        })
                        .collect(),
                    _ => {
                        complete = false;
                        Vec::new()
                    }
                };
                snapshot.services.push(plugins::Service { name: s.name, instances });
            }
        }
        _ => complete = false,
    }
    snapshot.services.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(prefix) = kv_prefix {
        let dep = Dependency::KeyPrefix { prefix: prefix.to_string() };
        used.insert(dep.clone());
        match data.fetch(&dep) {
            Some(DataValue::KeyPrefix(pairs)) => {
                snapshot.kv =
                    pairs.into_iter().map(|p| plugins::KvPair { key: p.key, value: p.value.into_bytes() }).collect();
                snapshot.kv.sort_by(|a, b| a.key.cmp(&b.key));
            }
            _ => complete = false,
        }
    }
    (snapshot, used, complete)
}

fn answers(data: &dyn TemplateData, deps: &BTreeSet<Dependency>) -> BTreeMap<Dependency, Option<DataValue>> {
    deps.iter().map(|d| (d.clone(), data.fetch(d))).collect()
}

/// What happened to one template in one pass (for logs and tests).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Unchanged,
    Incomplete,
    Failed,
    Identical,
    Written,
    CheckFailed,
}

/// Keeps every job's destination up to date until `stop` (or, with `once`, until each
/// has been rendered once).
pub async fn run(
    mut jobs: Vec<Job>,
    mut feed: Feed,
    config: RunnerConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    if jobs.is_empty() {
        bail!("no templates to render: give at least one -template SOURCE:DESTINATION");
    }
    loop {
        let data = feed.snapshot();
        let mut deps = BTreeSet::new();
        let mut written = false;
        for job in jobs.iter_mut() {
            let step = render_job(job, data.as_ref(), &data, &config).await;
            tracing::debug!(template = %job.spec.source.display(), ?step, "template pass");
            written |= step == Step::Written;
            deps.extend(job.used.iter().cloned());
        }
        feed.want(&deps);
        if let Some(events) = &config.events {
            let _ = events.send(Pass { all_rendered: jobs.iter().all(|j| j.done), written });
        }
        if config.once {
            if let Some(e) = jobs.iter().find_map(|j| j.error.clone()) {
                bail!("template {e}");
            }
            if jobs.iter().all(|j| j.done) {
                return Ok(());
            }
        }
        tokio::select! {
            alive = feed.changed() => if !alive { return Ok(()) },
            _ = stop.changed() => return Ok(()),
        }
        if let Some(q) = config.wait {
            let last_allowed = tokio::time::Instant::now() + q.max;
            loop {
                let quiet_until = (tokio::time::Instant::now() + q.min).min(last_allowed);
                tokio::select! {
                    _ = tokio::time::sleep_until(quiet_until) => break,
                    alive = feed.changed() => if !alive { return Ok(()) },
                    _ = stop.changed() => return Ok(()),
                }
                if tokio::time::Instant::now() >= last_allowed {
                    break;
                }
            }
        }
    }
}

async fn render_job(
    job: &mut Job,
    data: &dyn TemplateData,
    shared: &Arc<dyn TemplateData>,
    config: &RunnerConfig,
) -> Step {
    let now = answers(data, &job.used);
    if job.seen.as_ref() == Some(&now) {
        return Step::Unchanged;
    }
    let output = match &job.template {
        Source::Text(template) => {
            let opts = RenderOptions { params: config.params.clone(), ..RenderOptions::default() };
            let rendered = match template.render(shared.clone(), &opts) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("template {e}");
                    job.error = Some(e.to_string());
                    job.seen = Some(now);
                    return Step::Failed;
                }
            };
            job.error = None;
            job.seen = Some(answers(data, &rendered.used));
            job.used = rendered.used;
            if !rendered.missing.is_empty() {
                let waiting: Vec<String> = rendered.missing.iter().map(ToString::to_string).collect();
                tracing::debug!(template = %job.spec.source.display(), "waiting for {}", waiting.join(", "));
                return Step::Incomplete;
            }
            rendered.output
        }
        Source::Wasm(w) => {
            let (snapshot, used, complete) = plugin_snapshot(data, w.kv_prefix.as_deref());
            job.seen = Some(answers(data, &used));
            job.used = used;
            if !complete {
                return Step::Incomplete;
            }
            match w.host.render(&w.module, &snapshot, &w.config, w.timeout).await {
                Ok(text) => {
                    job.error = None;
                    text
                }
                Err(e) => {
                    tracing::error!("template {}: {e}; the previous output stays in place", job.spec.source.display());
                    job.error = Some(format!("{}: {e}", job.spec.source.display()));
                    return Step::Failed;
                }
            }
        }
    };
    if config.dry {
        job.done = true;
        if job.printed.as_ref() == Some(&output) {
            return Step::Identical;
        }
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "> {}", job.spec.destination.display());
        let _ = stdout.write_all(output.as_bytes());
        let _ = stdout.flush();
        job.printed = Some(output);
        return Step::Written;
    }
    let step = deliver(&job.spec, &output, config).await;
    match step {
        Step::Identical | Step::Written => job.done = true,
        Step::Failed => job.seen = None,
        _ => {}
    }
    step
}

/// Puts `output` at `spec`'s destination unless it is already there: written atomically
/// after the check command, then the template's command runs. Shared by the renderer and
/// `-dedup` followers, which get their output from the leader.
pub async fn deliver(spec: &TemplateSpec, output: &str, config: &RunnerConfig) -> Step {
    let dst = &spec.destination;
    if std::fs::read(dst).is_ok_and(|current| current == output.as_bytes()) {
        return Step::Identical;
    }
    match write_checked(dst, output, config).await {
        Ok(true) => {}
        Ok(false) => return Step::CheckFailed,
        Err(e) => {
            tracing::error!("template {}: {e:#}; will try again on the next change", spec.source.display());
            return Step::Failed;
        }
    }
    tracing::info!(template = %spec.source.display(), destination = %dst.display(), "rendered");
    if let Some(cmd) = &spec.command
        && let Err(e) = run_shell(cmd, config.command_timeout).await
    {
        tracing::error!("command {cmd:?} for {} failed: {e}; the renderer carries on", dst.display());
    }
    Step::Written
}

/// Writes `output` to a temp file beside `dst` (with `dst`'s permissions), runs the check
/// command on it, and renames it over `dst`. `Ok(false)`: the check refused it.
async fn write_checked(dst: &Path, output: &str, config: &RunnerConfig) -> Result<bool> {
    let dir = match dst.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    let file_name = dst.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "output".into());
    let tmp = dir.join(format!(".{file_name}.wharf-{}.tmp", std::process::id()));
    let result = async {
        {
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}: check the directory's permissions", tmp.display()))?;
            f.write_all(output.as_bytes()).with_context(|| format!("cannot write {}", tmp.display()))?;
            f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        }
        if let Ok(meta) = std::fs::metadata(dst) {
            std::fs::set_permissions(&tmp, meta.permissions())
                .with_context(|| format!("cannot copy the permissions of {}", dst.display()))?;
            use std::os::unix::fs::MetadataExt;
            // Keeping the owner needs privileges; without them the file keeps ours.
            let _ = std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()));
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
                .with_context(|| format!("cannot set the permissions of {}", tmp.display()))?;
        }
        if let Some(check) = &config.check_command {
            let cmd = check.replace("{{tmp}}", &shell_quote(&tmp.display().to_string()));
            if let Err(e) = run_shell(&cmd, config.command_timeout).await {
                tracing::error!(
                    "check {cmd:?} refused the new {}: {e}; the old file stays, trying again on the next change",
                    dst.display()
                );
                return Ok(false);
            }
        }
        std::fs::rename(&tmp, dst).with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()))?;
        Ok(true)
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    result
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with `sh -c`; an error says how it failed and what it printed.
async fn run_shell(cmd: &str, timeout: Duration) -> Result<(), String> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start sh: {e}"))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => return Err(format!("still running after {timeout:?}, killed")),
        Ok(Err(e)) => return Err(format!("cannot wait for it: {e}")),
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if text.is_empty() {
        text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    text.truncate(2000);
    Err(format!("{}{}", out.status, if text.is_empty() { String::new() } else { format!(": {text}") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_specs() {
        let s: TemplateSpec = "a.ctmpl:/etc/x.conf:nginx -s reload; echo a:b".parse().expect("spec");
        assert_eq!(s.source, PathBuf::from("a.ctmpl"));
        assert_eq!(s.destination, PathBuf::from("/etc/x.conf"));
        assert_eq!(s.command.as_deref(), Some("nginx -s reload; echo a:b"));
        assert_eq!("a:b".parse::<TemplateSpec>().expect("no command").command, None);
        assert!("a".parse::<TemplateSpec>().is_err());
        assert!(":b".parse::<TemplateSpec>().is_err());
    }

    #[test]
    fn waits() {
        let q: Quiescence = "500ms".parse().expect("min");
        assert_eq!((q.min, q.max), (Duration::from_millis(500), Duration::from_secs(2)));
        let q: Quiescence = "1s:3s".parse().expect("min:max");
        assert_eq!((q.min, q.max), (Duration::from_secs(1), Duration::from_secs(3)));
        assert!("3s:1s".parse::<Quiescence>().is_err());
        assert!("soon".parse::<Quiescence>().is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/tmp/a.conf"), "/tmp/a.conf");
        assert_eq!(shell_quote("/tmp/it's here"), r"'/tmp/it'\''s here'");
    }
}
