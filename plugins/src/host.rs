//! The plugin host: one wasmtime engine (pooling allocator, epoch interruption), plugins
//! compiled once per file version and pre-linked, a fresh instance per call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};

use crate::bindings::check::{HealthCheck, HealthCheckPre};
use crate::bindings::template::{Template, TemplatePre};
use crate::bindings::{CheckResult, Instance, Snapshot, Status};
use crate::sandbox::{Sandbox, Stopped};

/// Default linear memory limit of one plugin instance.
pub const DEFAULT_MEMORY_LIMIT: usize = 16 << 20;
/// Longest check output kept (Consul's OutputMaxSize).
pub const MAX_OUTPUT: usize = 4096;
/// Longest text a template plugin may return.
pub const MAX_TEMPLATE_OUTPUT: usize = 4 << 20;
/// Longest a single plugin call may run, whatever the check's Timeout says: a call holds
/// one of the host's instance slots.
pub const MAX_CALL: Duration = Duration::from_secs(300);
/// How often the epoch ticks: the granularity of deadlines and of yielding to other tasks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How the host is set up.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// Where `NAME.wasm` plugins are found.
    pub dir: PathBuf,
    /// Linear memory limit per instance, in bytes.
    pub memory_limit: usize,
    /// Plugin calls running at once (each holds one pooled instance slot); more wait.
    pub max_concurrent: u32,
}

impl PluginConfig {
    pub fn new(dir: impl Into<PathBuf>) -> PluginConfig {
        PluginConfig { dir: dir.into(), memory_limit: DEFAULT_MEMORY_LIMIT, max_concurrent: 64 }
    }
}

/// Which world a plugin is loaded for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum World {
    Check,
    Template,
}

enum Loaded {
    Check(HealthCheckPre<Sandbox>),
    Template(TemplatePre<Sandbox>),
}

type Stamp = (Option<SystemTime>, u64);
type LoadResult = Result<Arc<Loaded>, String>;

struct CacheEntry {
    stamp: Stamp,
    loaded: LoadResult,
}

/// The result of one health-check plugin call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    pub status: Status,
    pub output: String,
    /// Time to create the instance (zero when the call never got that far).
    pub instantiate: Duration,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub compiles: AtomicU64,
    pub instantiate_nanos: AtomicU64,
}

impl PluginMetrics {
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP wharf_plugin_calls_total Wasm plugin calls.");
        let _ = writeln!(out, "# TYPE wharf_plugin_calls_total counter\nwharf_plugin_calls_total {}", c(&self.calls));
        let _ =
            writeln!(out, "# HELP wharf_plugin_failures_total Wasm plugin calls that trapped, timed out or failed.");
        let _ = writeln!(
            out,
            "# TYPE wharf_plugin_failures_total counter\nwharf_plugin_failures_total {}",
            c(&self.failures)
        );
        let _ = writeln!(out, "# HELP wharf_plugin_compiles_total Wasm plugin files compiled.");
        let _ = writeln!(
            out,
            "# TYPE wharf_plugin_compiles_total counter\nwharf_plugin_compiles_total {}",
            c(&self.compiles)
        );
        let _ = writeln!(out, "# HELP wharf_plugin_instantiate_seconds_total Time spent creating plugin instances.");
        let _ = writeln!(
            out,
            "# TYPE wharf_plugin_instantiate_seconds_total counter\nwharf_plugin_instantiate_seconds_total {:.6}",
            c(&self.instantiate_nanos) as f64 / 1e9
        );
    }
}

/// Runs Wasm plugins from one directory. Cheap to share (`Arc`); dropping it stops the
/// epoch ticker.
pub struct PluginHost {
    engine: Engine,
    check_linker: Linker<Sandbox>,
    template_linker: Linker<Sandbox>,
    dir: PathBuf,
    memory_limit: usize,
    cache: Mutex<HashMap<(World, String), CacheEntry>>,
    /// Held while compiling, so many first calls of a new plugin compile it once.
    compiling: tokio::sync::Mutex<()>,
    permits: Semaphore,
    http: reqwest::Client,
    clock_origin: Instant,
    ticker_stop: Arc<AtomicBool>,
    pub metrics: PluginMetrics,
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl PluginHost {
    pub fn new(cfg: PluginConfig) -> anyhow::Result<PluginHost> {
        let slots = cfg.max_concurrent.max(1);
        let memory_limit = cfg.memory_limit.max(1 << 16);
        let mut pool = PoolingAllocationConfig::new();
        // A Rust component is a handful of core instances (the program plus small shims).
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 4)
            .total_stacks(slots)
            .max_memory_size(memory_limit)
            .max_core_instances_per_component(8)
            .max_memories_per_component(2)
            .max_tables_per_component(4)
            .max_unused_warm_slots(slots.min(16));
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .memory_reservation(memory_limit as u64)
            .memory_guard_size(1 << 16)
            .max_wasm_stack(512 << 10);
        let engine = Engine::new(&config).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the Wasm engine: {e}; check that the system allows mmap of a few GiB of address space"
            )
        })?;

        let mut check_linker = Linker::<Sandbox>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut check_linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        HealthCheck::add_to_linker::<_, HasSelf<_>>(&mut check_linker, |s| s).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut template_linker = Linker::<Sandbox>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut template_linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        Template::add_to_linker::<_, HasSelf<_>>(&mut template_linker, |s| s).map_err(|e| anyhow::anyhow!("{e}"))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new().name("wharf-wasm-epoch".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })?;
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent("wharf wasm plugin")
            .pool_max_idle_per_host(2)
            .build()?;
        Ok(PluginHost {
            engine,
            check_linker,
            template_linker,
            dir: cfg.dir,
            memory_limit,
            cache: Mutex::new(HashMap::new()),
            compiling: tokio::sync::Mutex::new(()),
            permits: Semaphore::new(slots as usize),
            http,
            clock_origin: Instant::now(),
            ticker_stop,
            metrics: PluginMetrics::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a plugin name stands for, or why there is none. This is what check
    /// registration validates, so an unknown plugin is refused up front.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, String> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name.len() <= 128
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid {
            return Err(format!(
                "invalid plugin name {name:?}: use the file name without .wasm (letters, digits, '_', '-', '.')"
            ));
        }
        let file = name.strip_suffix(".wasm").unwrap_or(name);
        let path = self.dir.join(format!("{file}.wasm"));
        if !path.is_file() {
            return Err(format!("unknown plugin {name:?}: there is no {}", path.display()));
        }
        Ok(path)
    }

    /// The plugin's file and its version stamp, and the cached load of that version.
    fn lookup(&self, world: World, name: &str) -> Result<(PathBuf, Stamp, Option<LoadResult>), String> {
        let path = self.resolve(name)?;
        let meta = std::fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let stamp = (meta.modified().ok(), meta.len());
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(&(world, name.to_string())).filter(|e| e.stamp == stamp).map(|e| e.loaded.clone()));
        Ok((path, stamp, cached))
    }

    fn remember(
        &self,
        world: World,
        name: &str,
        stamp: Stamp,
        loaded: Result<Loaded, String>,
        path: &Path,
    ) -> LoadResult {
        self.metrics.compiles.fetch_add(1, Ordering::Relaxed);
        let loaded =
            loaded.map(Arc::new).map_err(|e| format!("plugin {name:?} ({}) cannot be used: {e}", path.display()));
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert((world, name.to_string()), CacheEntry { stamp, loaded: loaded.clone() });
        }
        loaded
    }

    fn linker(&self, world: World) -> Linker<Sandbox> {
        match world {
            World::Check => self.check_linker.clone(),
            World::Template => self.template_linker.clone(),
        }
    }

    /// The compiled, pre-linked plugin, compiling it (off the async threads) when the file
    /// is new or changed.
    async fn load(&self, world: World, name: &str) -> LoadResult {
        let (_, _, cached) = self.lookup(world, name)?;
        if let Some(c) = cached {
            return c;
        }
        // One compile at a time: callers that waited find the result in the cache.
        let _compiling = self.compiling.lock().await;
        let (path, stamp, cached) = self.lookup(world, name)?;
        if let Some(c) = cached {
            return c;
        }
        let (engine, linker, p) = (self.engine.clone(), self.linker(world), path.clone());
        let loaded = tokio::task::spawn_blocking(move || compile(&engine, &linker, world, &p))
            .await
            .unwrap_or_else(|e| Err(format!("compiling stopped: {e}")));
        self.remember(world, name, stamp, loaded, &path)
    }

    /// Compiles template plugin `name` now (blocking), so a bad plugin is reported at start-up.
    pub fn prepare_template(&self, name: &str) -> Result<(), String> {
        let (path, stamp, cached) = self.lookup(World::Template, name)?;
        let loaded = match cached {
            Some(c) => c,
            None => {
                let loaded = compile(&self.engine, &self.template_linker, World::Template, &path);
                self.remember(World::Template, name, stamp, loaded, &path)
            }
        };
        loaded.map(|_| ())
    }

    fn store(&self, name: &str, target: Option<Instance>, timeout: Duration) -> Store<Sandbox> {
        let deadline = Instant::now() + timeout;
        let sandbox =
            Sandbox::new(Arc::from(name), target, deadline, self.memory_limit, self.http.clone(), self.clock_origin);
        let mut store = Store::new(&self.engine, sandbox);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            if Instant::now() >= ctx.data().deadline {
                ctx.data_mut().stopped = Some(Stopped::Deadline);
                return Err(wasmtime::format_err!("deadline reached"));
            }
            // Give the executor back to other tasks every tick.
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    /// Runs health-check plugin `name` against `target`. Never fails: whatever goes wrong
    /// (unknown or invalid plugin, trap, timeout, memory limit, malformed result) is a
    /// critical status whose output says why.
    pub async fn check(&self, name: &str, target: &Instance, config: &str, timeout: Duration) -> CheckOutcome {
        self.metrics.calls.fetch_add(1, Ordering::Relaxed);
        let critical = |output: String, instantiate| CheckOutcome { status: Status::Critical, output, instantiate };
        let timeout = timeout.min(MAX_CALL);
        let pre = match self.load(World::Check, name).await {
            Ok(l) => match &*l {
                Loaded::Check(pre) => pre.clone(),
                Loaded::Template(_) => {
                    return critical(format!("plugin {name:?} is not a health check"), Duration::ZERO);
                }
            },
            Err(e) => {
                self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                return critical(e, Duration::ZERO);
            }
        };
        // A slot is taken after compiling, and waiting for one counts against the timeout.
        let started = Instant::now();
        let _permit = match tokio::time::timeout(timeout, self.permits.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return critical("the plugin host is shutting down".into(), Duration::ZERO),
            Err(_) => {
                return critical(
                    format!("plugin {name:?}: no free instance slot within the check's timeout of {timeout:?}"),
                    Duration::ZERO,
                );
            }
        };
        let remaining = timeout.saturating_sub(started.elapsed());
        let mut store = self.store(name, Some(target.clone()), remaining);
        let mut instantiate = Duration::ZERO;
        let run = async {
            let started = Instant::now();
            let instance = pre.instantiate_async(&mut store).await?;
            instantiate = started.elapsed();
            instance.call_check(&mut store, target, config).await
        };
        // The epoch deadline stops guest code; this also bounds host I/O that overruns.
        let result = tokio::time::timeout(remaining + EPOCH_TICK * 5, run).await;
        self.metrics.instantiate_nanos.fetch_add(instantiate.as_nanos() as u64, Ordering::Relaxed);
        match result {
            Ok(Ok(Ok(CheckResult { status, mut output }))) => {
                truncate_with_note(&mut output, MAX_OUTPUT);
                CheckOutcome { status, output, instantiate }
            }
            Ok(Ok(Err(mut message))) => {
                if let Some(wanted) = store.data().limits.hit {
                    // It noticed the failed allocation itself; still say what the host saw.
                    message = format!("{}; the plugin said: {message}", self.memory_message(name, wanted));
                }
                truncate_with_note(&mut message, MAX_OUTPUT);
                CheckOutcome { status: Status::Critical, output: message, instantiate }
            }
            Ok(Err(e)) => {
                self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                critical(self.explain(name, &store, &e, timeout), instantiate)
            }
            Err(_) => {
                self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                critical(timed_out(name, timeout), instantiate)
            }
        }
    }

    /// Runs template plugin `name` on `catalog`; an error says why nothing was rendered.
    pub async fn render(
        &self,
        name: &str,
        catalog: &Snapshot,
        config: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        self.metrics.calls.fetch_add(1, Ordering::Relaxed);
        let timeout = timeout.min(MAX_CALL);
        let pre = match &*self.load(World::Template, name).await? {
            Loaded::Template(pre) => pre.clone(),
            Loaded::Check(_) => return Err(format!("plugin {name:?} is not a template plugin")),
        };
        let _permit = match tokio::time::timeout(timeout, self.permits.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err("the plugin host is shutting down".to_string()),
            Err(_) => return Err(format!("plugin {name:?}: no free instance slot within {timeout:?}")),
        };
        let mut store = self.store(name, None, timeout);
        let run = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance.call_render(&mut store, catalog, config).await
        };
        let result = tokio::time::timeout(timeout + EPOCH_TICK * 5, run).await;
        let out = match result {
            Ok(Ok(Ok(text))) if text.len() > MAX_TEMPLATE_OUTPUT => Err(format!(
                "plugin {name:?} returned {} bytes, more than the {MAX_TEMPLATE_OUTPUT} allowed",
                text.len()
            )),
            Ok(Ok(Ok(text))) => Ok(text),
            Ok(Ok(Err(message))) => Err(format!("plugin {name:?}: {message}")),
            Ok(Err(e)) => Err(self.explain(name, &store, &e, timeout)),
            Err(_) => Err(timed_out(name, timeout)),
        };
        if out.is_err() {
            self.metrics.failures.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    fn memory_message(&self, name: &str, wanted: usize) -> String {
        format!(
            "plugin {name:?} exceeded its memory limit of {} MiB (it asked for {:.1} MiB)",
            self.memory_limit >> 20,
            wanted as f64 / (1 << 20) as f64
        )
    }

    /// Says why a call failed, from what the host observed first.
    fn explain(&self, name: &str, store: &Store<Sandbox>, err: &wasmtime::Error, timeout: Duration) -> String {
        let data = store.data();
        let stderr = data.stderr.contents();
        let with_stderr = |mut s: String| {
            if !stderr.is_empty() {
                s.push_str("; plugin stderr: ");
                s.push_str(&stderr);
            }
            truncate_with_note(&mut s, MAX_OUTPUT);
            s
        };
        if data.stopped == Some(Stopped::Deadline) {
            return timed_out(name, timeout);
        }
        if let Some(wanted) = data.limits.hit {
            return with_stderr(self.memory_message(name, wanted));
        }
        if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
            return with_stderr(format!("plugin {name:?} trapped: {trap}"));
        }
        let first = format!("{err}");
        with_stderr(format!("plugin {name:?} failed: {first}"))
    }
}

fn timed_out(name: &str, timeout: Duration) -> String {
    format!("plugin {name:?} did not finish within the check's timeout of {timeout:?} and was stopped")
}

fn compile(engine: &Engine, linker: &Linker<Sandbox>, world: World, path: &Path) -> Result<Loaded, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.get(..4) != Some(b"\0asm".as_slice()) {
        return Err("not a WebAssembly file (no \\0asm header)".into());
    }
    let component = Component::new(engine, &bytes).map_err(|e| {
        let core = bytes.get(4..8) == Some([1, 0, 0, 0].as_slice());
        if core {
            "it is a core Wasm module, not a component: build it for wasm32-wasip2 (see plugins/guest/README.md)"
                .to_string()
        } else {
            format!("not a valid Wasm component: {e}")
        }
    })?;
    let pre = linker.instantiate_pre(&component).map_err(|e| format!("its imports cannot be satisfied: {e}"))?;
    match world {
        World::Check => HealthCheckPre::new(pre)
            .map(Loaded::Check)
            .map_err(|e| format!("it does not export the health-check world (check: func): {e}")),
        World::Template => TemplatePre::new(pre)
            .map(Loaded::Template)
            .map_err(|e| format!("it does not export the template world (render: func): {e}")),
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut n = max;
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        s.truncate(n);
    }
}

/// Like [`truncate`], ending with a note of how long the text was.
fn truncate_with_note(s: &mut String, max: usize) {
    if s.len() > max {
        let note = format!(" ... (cut: {} bytes in all)", s.len());
        truncate(s, max.saturating_sub(note.len()));
        s.push_str(&note);
    }
}
