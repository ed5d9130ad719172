//! wharf's front door: a Pingora HTTP proxy whose pools follow the catalog.
//!
//! A rebuilder task (on the agent's runtime) watches the catalog; whenever the committed
//! index moves it builds a new immutable [`RouteTable`] and publishes it through
//! `ArcSwap`. Pingora (on its own runtime, on its own thread) loads the current table once
//! per request. No reload, no lock on the request path; if the catalog stops changing the
//! last good table keeps serving. Plain HTTP/1.1 requests take the fast path ([`fast`]);
//! everything else goes through Pingora's pipeline ([`service`]).

pub mod access_log;
pub mod attempts;
pub mod balance;
pub mod fast;
pub mod header_deadline;
pub mod metrics;
pub mod pingora_path;
pub mod reply;
pub mod request;
pub mod route_table;
pub mod tls;
pub mod upstream_pool;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use catalog::Catalog;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::watch;

pub use access_log::AccessLog;
pub use attempts::UpstreamSettings;
pub use balance::Policy;
pub use metrics::ProxyMetrics;
pub use pingora_path::WharfProxy;
pub use route_table::{RouteTable, TableBuilder, TableSettings};

/// Everything the proxy is started with.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Plain HTTP listeners (HTTP/1.1 and h2c).
    pub listen: Vec<SocketAddr>,
    /// Worker threads of the proxy's runtime.
    pub threads: usize,
    pub table: TableSettings,
    pub upstream: UpstreamSettings,
    /// JSON-lines access log file (`-`: standard output); none by default.
    pub access_log: Option<std::path::PathBuf>,
    /// TLS listener (HTTP/1.1 and HTTP/2 by ALPN) and its certificates.
    pub tls_listen: Option<SocketAddr>,
    pub certs: Vec<tls::CertPaths>,
    /// Longest a client may take to send a request header (slowloris defence).
    pub header_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "cannot listen on {addr} for the proxy: {error} (ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another with --proxy-addr, or --no-proxy)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        error: std::io::Error,
    },
    #[error("cannot open the access log {}: {error}", path.display())]
    AccessLog {
        path: std::path::PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("the proxy listener on {0} did not come up within 10 s")]
    NotListening(SocketAddr),
    #[error("cannot start the proxy thread: {0}")]
    Thread(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot set up TLS on {addr}: {reason}")]
    TlsSetup { addr: SocketAddr, reason: String },
}

/// The running proxy.
pub struct ProxyHandle {
    pub table: Arc<ArcSwap<RouteTable>>,
    pub metrics: Arc<ProxyMetrics>,
    /// The TLS certificates, reloadable (SIGHUP).
    pub certs: Option<Arc<tls::CertStore>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProxyHandle {
    /// Re-reads the certificate files; the old ones stay in use on error.
    pub fn reload_tls(&self) -> Result<usize, tls::TlsError> {
        match &self.certs {
            Some(c) => c.reload(),
            None => Ok(0),
        }
    }

    /// Waits for Pingora's thread to finish after shutdown was signalled.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Pingora's shutdown trigger: the agent's stop channel.
struct AgentShutdown(watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for AgentShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        ShutdownSignal::GracefulTerminate
    }
}

/// Rebuilds the table whenever the catalog's committed index moves.
async fn follow_catalog(
    catalog: Catalog,
    mut builder: TableBuilder,
    table: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<ProxyMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = catalog.subscribe();
    let mut last = table.load().index;
    loop {
        let snap = rx.borrow_and_update().clone();
        if snap.last_index() != last {
            let started = Instant::now();
            let next = builder.build(&snap);
            last = next.index;
            table.store(Arc::new(next));
            metrics.rebuilds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics.rebuild_duration.observe(started.elapsed());
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Pingora binds inside its own thread; waits until every listener accepts connections.
fn wait_listening(addrs: &[SocketAddr]) -> Result<(), ProxyError> {
    for addr in addrs {
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe =
            if addr.ip().is_unspecified() { SocketAddr::new([127, 0, 0, 1].into(), addr.port()) } else { *addr };
        while TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(ProxyError::NotListening(*addr));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// Starts the proxy: the rebuilder on the current Tokio runtime, Pingora on a thread of
/// its own. Fails if a listener cannot be bound.
pub fn start(config: ProxyConfig, catalog: Catalog, stop: watch::Receiver<bool>) -> Result<ProxyHandle, ProxyError> {
    let all_listeners: Vec<SocketAddr> = config.listen.iter().copied().chain(config.tls_listen).collect();
    for addr in &all_listeners {
        TcpListener::bind(addr).map_err(|error| ProxyError::Bind { addr: *addr, error })?;
    }
    let certs = match config.tls_listen {
        Some(_) => Some(Arc::new(tls::CertStore::load(config.certs.clone())?)),
        None => None,
    };
    let metrics = Arc::new(ProxyMetrics::default());
    let mut builder = TableBuilder::new(config.table.clone(), metrics.clone());
    let table = Arc::new(ArcSwap::from_pointee(builder.build(&catalog.snapshot())));
    tokio::spawn(follow_catalog(catalog, builder, table.clone(), metrics.clone(), stop.clone()));

    let conf = ServerConf {
        threads: config.threads.max(1),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(5),
        upstream_keepalive_pool_size: 256,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let access_log = match &config.access_log {
        Some(path) => {
            Some(Arc::new(AccessLog::open(path).map_err(|error| ProxyError::AccessLog { path: path.clone(), error })?))
        }
        None => None,
    };
    let proxy = WharfProxy {
        table: table.clone(),
        settings: config.upstream.clone(),
        metrics: metrics.clone(),
        access_log: access_log.clone(),
    };
    let mut app = pingora::proxy::http_proxy(&server.configuration, proxy);
    let mut opts = HttpServerOptions::default();
    opts.h2c = true;
    // An HTTP/2 connection with no open stream is closed like an idle keep-alive one.
    opts.h2_idle_timeout = Some(config.upstream.client_keepalive);
    app.server_options = Some(opts);
    let app = header_deadline::HeaderDeadline {
        inner: Arc::new(header_deadline::Rearm { inner: Arc::new(app) }),
        timeout: config.header_timeout,
        timeouts: metrics.header_timeouts.clone(),
    };
    let app = fast::FastPath::new(
        Arc::new(app),
        table.clone(),
        config.upstream.clone(),
        metrics.clone(),
        access_log,
        config.header_timeout,
    );
    let mut service = pingora::services::listening::Service::new("wharf proxy".to_string(), app);
    for addr in &config.listen {
        service.add_tcp(&addr.to_string());
    }
    if let (Some(addr), Some(store)) = (config.tls_listen, &certs) {
        let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "")
            .map_err(|e| ProxyError::TlsSetup { addr, reason: e.to_string() })?;
        settings.set_cert_resolver(Arc::new(tls::SniResolver(store.clone())));
        settings.enable_h2();
        service.add_tls_with_settings(&addr.to_string(), None, settings);
    }
    server.add_service(service);
    let shutdown = AgentShutdown(stop);
    let thread = std::thread::Builder::new()
        .name("wharf-proxy".into())
        .spawn(move || server.run(RunArgs { shutdown_signal: Box::new(shutdown) }))
        .map_err(|e| ProxyError::Thread(e.to_string()))?;

    wait_listening(&all_listeners)?;
    Ok(ProxyHandle { table, metrics, certs, thread: Some(thread) })
}
