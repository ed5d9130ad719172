//! What one plugin call runs inside: the store's data (WASI with nothing granted, the
//! memory limiter, the instance the plugin may reach) and the host functions of
//! `wit/plugin.wit`.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::check::wharf::plugin::{net, runtime, types};
use crate::bindings::{HttpRequest, HttpResponse, Instance, Level};

/// Largest HTTP body or TCP reply a plugin may receive.
pub const MAX_RESPONSE: usize = 1 << 20;
/// Longest log line a plugin may write, and how many per call.
pub const MAX_LOG_LINE: usize = 1024;
pub const MAX_LOG_LINES: u32 = 100;
/// How much of a plugin's stderr (panic messages) is kept for the check's output.
pub const MAX_STDERR: usize = 2048;
/// WASI resources (streams, pollables, ...) one call may hold at once.
pub const MAX_HANDLES: usize = 1000;
/// Largest `get-random-bytes` request.
pub const MAX_RANDOM: u64 = 64 << 10;
/// Longest `until` marker of a TCP exchange.
pub const MAX_UNTIL: usize = 4096;

/// Why a call was stopped by the host rather than finishing on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    Deadline,
}

/// The store's data for one plugin call.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: MemoryLimiter,
    /// The plugin's name, for log lines.
    pub plugin: Arc<str>,
    /// The instance the net imports may reach; `None` for template plugins.
    pub target: Option<Instance>,
    pub deadline: Instant,
    pub stopped: Option<Stopped>,
    pub stderr: BoundedPipe,
    log_lines: u32,
    http: reqwest::Client,
    clock_origin: Instant,
}

impl Sandbox {
    pub fn new(
        plugin: Arc<str>,
        target: Option<Instance>,
        deadline: Instant,
        memory_limit: usize,
        http: reqwest::Client,
        clock_origin: Instant,
    ) -> Sandbox {
        let stderr = BoundedPipe::new(MAX_STDERR);
        // Nothing granted: no preopened directories, no environment, no arguments, no sockets,
        // no name lookups. stdout is discarded, stderr is kept (bounded) for panic messages.
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stderr(stderr.clone())
            // Host-side allocations a plugin can cause stay small (the default is 64 MiB).
            .max_random_size(MAX_RANDOM)
            .build();
        // Every WASI handle is a host allocation outside the plugin's memory limit.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        Sandbox {
            wasi,
            table,
            limits: MemoryLimiter { limit: memory_limit, hit: None },
            plugin,
            target,
            deadline,
            stopped: None,
            stderr,
            log_lines: 0,
            http,
            clock_origin,
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Refuses any address but the checked instance's own.
    fn allowed(&self, host: &str, port: u16) -> Result<(), String> {
        let Some(t) = &self.target else {
            return Err("this plugin has no network access".into());
        };
        let unbracket = |h: &'_ str| h.trim_start_matches('[').trim_end_matches(']').to_string();
        let (host, own) = (unbracket(host), unbracket(&t.address));
        let same_host = match (host.parse::<std::net::IpAddr>(), own.parse::<std::net::IpAddr>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => host.eq_ignore_ascii_case(&own),
        };
        if same_host && port == t.port {
            Ok(())
        } else {
            Err(format!(
                "refused: a plugin may only reach the instance it checks ({}:{}), not {host}:{port}",
                t.address, t.port
            ))
        }
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Bounds linear memory growth and remembers the attempt that went over, so the check's
/// output can say so instead of a bare trap.
pub struct MemoryLimiter {
    pub limit: usize,
    pub hit: Option<usize>,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl types::Host for Sandbox {}

impl runtime::Host for Sandbox {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.log_lines = self.log_lines.saturating_add(1);
        if self.log_lines > MAX_LOG_LINES {
            return Ok(());
        }
        let mut msg = message;
        crate::host::truncate(&mut msg, MAX_LOG_LINE);
        let plugin = &*self.plugin;
        let instance = self.target.as_ref().map(|t| t.id.as_str()).unwrap_or("");
        // Control characters would let a plugin forge log lines or terminal escapes.
        let msg: String = msg.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        match level {
            Level::Debug => tracing::debug!(plugin, instance, "{msg}"),
            Level::Info => tracing::info!(plugin, instance, "{msg}"),
            Level::Warn => tracing::warn!(plugin, instance, "{msg}"),
            Level::Error => tracing::error!(plugin, instance, "{msg}"),
        }
        if self.log_lines == MAX_LOG_LINES {
            tracing::warn!(plugin, instance, "plugin wrote {MAX_LOG_LINES} log lines in one call: the rest is dropped");
        }
        Ok(())
    }

    fn monotonic_now(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::try_from(self.clock_origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

impl net::Host for Sandbox {
    async fn http(&mut self, request: HttpRequest) -> Result<HttpResponse, String> {
        let url = reqwest::Url::parse(&request.url).map_err(|e| format!("invalid URL {:?}: {e}", request.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("unsupported URL scheme {:?}: use http or https", url.scheme()));
        }
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        self.allowed(&host, port)?;
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| format!("invalid HTTP method {:?}", request.method))?;
        let mut req = self.http.request(method, url).timeout(self.remaining());
        for (k, v) in &request.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if !request.body.is_empty() {
            req = req.body(request.body);
        }
        let mut resp = req.send().await.map_err(|e| describe_reqwest(&request.url, &e))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| describe_reqwest(&request.url, &e))? {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(format!("response body from {} is larger than {MAX_RESPONSE} bytes", request.url));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse { status, headers, body })
    }

    async fn tcp_exchange(
        &mut self,
        address: String,
        send: Vec<u8>,
        until: Vec<u8>,
        max_bytes: u32,
    ) -> Result<Vec<u8>, String> {
        let Some((host, port)) = address.rsplit_once(':') else {
            return Err(format!("invalid address {address:?}: expected HOST:PORT"));
        };
        let port: u16 = port.parse().map_err(|_| format!("invalid port in {address:?}"))?;
        self.allowed(host, port)?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let max = (max_bytes as usize).min(MAX_RESPONSE);
        if until.len() > MAX_UNTIL {
            return Err(format!("the until marker is {} bytes; at most {MAX_UNTIL} are allowed", until.len()));
        }
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("connect {address}: {e}"))?;
            if !send.is_empty() {
                stream.write_all(&send).await.map_err(|e| format!("write to {address}: {e}"))?;
            }
            let mut got = Vec::new();
            let mut buf = vec![0u8; 4096];
            while got.len() < max {
                let want = buf.len().min(max - got.len());
                let n = stream.read(&mut buf[..want]).await.map_err(|e| format!("read from {address}: {e}"))?;
                if n == 0 {
                    break;
                }
                // Only the new bytes (plus what a marker split across reads needs) are scanned.
                let from = got.len().saturating_sub(until.len().saturating_sub(1));
                got.extend_from_slice(&buf[..n]);
                if !until.is_empty() && got[from..].windows(until.len()).any(|w| w == until.as_slice()) {
                    break;
                }
            }
            Ok(got)
        };
        match tokio::time::timeout(self.remaining(), exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("TCP exchange with {address} timed out")),
        }
    }
}

fn describe_reqwest(url: &str, e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("HTTP request to {url} timed out");
    }
    let mut msg = format!("HTTP request to {url} failed: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// A WASI output stream that keeps the first `capacity` bytes and drops the rest (a
/// plugin that writes a lot to stderr is not punished with a trap).
#[derive(Clone)]
pub struct BoundedPipe {
    capacity: usize,
    buf: Arc<Mutex<Vec<u8>>>,
}

impl BoundedPipe {
    pub fn new(capacity: usize) -> BoundedPipe {
        BoundedPipe { capacity, buf: Arc::new(Mutex::new(Vec::new())) }
    }

    pub fn contents(&self) -> String {
        let bytes = self.buf.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

impl IsTerminal for BoundedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for BoundedPipe {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    /// A direct stream: the default adapter spawns a task per handle.
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }
}

impl BoundedPipe {
    fn append(&self, data: &[u8]) {
        if let Ok(mut b) = self.buf.lock() {
            let room = self.capacity.saturating_sub(b.len());
            b.extend_from_slice(&data[..room.min(data.len())]);
        }
    }
}

impl wasmtime_wasi::p2::OutputStream for BoundedPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl wasmtime_wasi::p2::Pollable for BoundedPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for BoundedPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.append(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
