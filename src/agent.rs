//! `wharf agent`: wires the catalog's Raft node, the Raft port, the HTTP API and the
//! config-dir loader into one process, and supervises them (signals, reload, leave).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use discovery::api::{self, AgentControl, AgentInfo, ApiState};
use discovery::catalog::Cluster;
use discovery::command::Command;
use discovery::dns::{DnsConfig, DnsOptions, DnsServer};
use discovery::model::{CheckStatus, HealthCheck};
use discovery::raft::network;
use discovery::raft::node::{RaftNode, RaftSettings};
use discovery::store::raft_id_from_uuid;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Options of `wharf agent`. Durations and sizes state their unit.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Single-node development mode: bootstrap a one-server cluster on loopback.
    /// This is also what `wharf agent` does when neither --server nor --retry-join is given.
    #[arg(long)]
    pub dev: bool,
    /// Run as a voting server (clients join as non-voting learners).
    #[arg(long)]
    pub server: bool,
    /// Number of servers to wait for before bootstrapping the cluster (1 = alone).
    #[arg(long, value_name = "N")]
    pub bootstrap_expect: Option<usize>,
    /// Raft address (host[:port]) of a server to join; repeatable.
    #[arg(long, value_name = "ADDR")]
    pub retry_join: Vec<String>,
    /// Directory for the Raft log, snapshots and node identity (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node name (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Datacenter name.
    #[arg(long, default_value = "dc1")]
    pub datacenter: String,
    /// Address other nodes and clients reach this agent at (default: the bind address,
    /// or 127.0.0.1 when binding all interfaces).
    #[arg(long, value_name = "IP")]
    pub advertise: Option<IpAddr>,
    /// Address the Raft port binds to.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Raft port (server-to-server traffic; authenticated by the cluster key).
    #[arg(long, default_value_t = 8300)]
    pub raft_port: u16,
    /// Address the HTTP API binds to.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub client: IpAddr,
    /// HTTP API port.
    #[arg(long, default_value_t = 8500)]
    pub http_port: u16,
    /// Shared secret every member of the cluster presents on the Raft port. Generated
    /// and kept in the data dir when not given (single node only).
    #[arg(long, env = "WHARF_CLUSTER_KEY", hide_env_values = true)]
    pub cluster_key: Option<String>,
    /// Directory of service definitions (Consul JSON); repeatable. Re-read on SIGHUP and
    /// `wharf reload`.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Vec<PathBuf>,
    /// Raft log entries between two snapshots.
    #[arg(long, default_value_t = 8192)]
    pub raft_snapshot_threshold: u64,

    /// Address the DNS server (UDP and TCP) binds to.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub dns_addr: IpAddr,
    /// DNS port, UDP and TCP (53 needs root or CAP_NET_BIND_SERVICE).
    #[arg(long, default_value_t = 8600)]
    pub dns_port: u16,
    /// Do not run the DNS server.
    #[arg(long)]
    pub no_dns: bool,
    /// Domain the DNS server answers (`web.service.<domain>`).
    #[arg(long, value_name = "NAME", default_value = "consul")]
    pub domain: String,
    /// A second domain answered the same way.
    #[arg(long, value_name = "NAME")]
    pub alt_domain: Option<String>,
    /// Leave instances whose worst check is `warning` out of DNS answers (critical ones
    /// always are).
    #[arg(long)]
    pub dns_only_passing: bool,
    /// Most A/AAAA records in one DNS answer (0 = no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub dns_a_record_limit: usize,
    /// TTL of node records (Go duration, whole seconds used, e.g. 30s).
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub dns_node_ttl: String,
    /// TTL of a service's records, NAME=DURATION (e.g. web=30s); NAME may end in `*` as a
    /// prefix wildcard, `*` alone is the default (0s otherwise); repeatable.
    #[arg(long, value_name = "NAME=DURATION")]
    pub dns_service_ttl: Vec<String>,
    /// Upstream DNS server (IP or IP:PORT, port 53 by default) for names outside the
    /// domain; repeatable, tried in order. Without one such names are REFUSED.
    #[arg(long, value_name = "ADDR")]
    pub recursor: Vec<String>,
    /// Threads answering DNS, on a runtime of their own so a query flood cannot starve the
    /// HTTP API or the proxy.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub dns_threads: usize,

    /// Allow script/args checks. WARNING: with an HTTP API reachable by others, script checks
    /// are remote code execution; enable only on a trusted API address with ACLs.
    #[arg(long)]
    pub enable_script_checks: bool,
    /// Directory of Wasm plugins (`NAME.wasm` components): health checks registered with
    /// `"Wasm": {"Module": "NAME", "Config": "..."}` and template plugins. Without it, Wasm
    /// checks are refused at registration.
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Linear memory limit of one Wasm plugin instance, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub plugin_memory: usize,

    /// Watch the local Docker engine (`/var/run/docker.sock`, or DOCKER_HOST): off, auto
    /// (when the socket exists) or on.
    #[arg(long, default_value = "auto", value_name = "off|auto|on")]
    pub docker: discovery::docker::DockerWatch,
    /// Register containers' exposed ports at their container IP instead of published host
    /// ports (Registrator's -internal).
    #[arg(long)]
    pub docker_internal: bool,
    /// With --docker-internal, the Docker network whose container IP is registered.
    #[arg(long, value_name = "NAME")]
    pub docker_network: Option<String>,
    /// Only register containers that name their service (SERVICE_NAME, SERVICE_<port>_NAME
    /// or the wharf.service label).
    #[arg(long)]
    pub docker_explicit: bool,

    /// Proxy listener (HTTP/1.1 and h2c); repeatable. Ports below 1024 need root or
    /// CAP_NET_BIND_SERVICE.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:80")]
    pub proxy_addr: Vec<SocketAddr>,
    /// Do not run the proxy.
    #[arg(long)]
    pub no_proxy: bool,
    /// TLS listener of the proxy (HTTP/1.1 and HTTP/2 by ALPN); needs --proxy-cert.
    #[arg(long, value_name = "ADDR")]
    pub proxy_tls_addr: Option<SocketAddr>,
    /// Certificate and key for the TLS listener, `CERT.pem:KEY.pem`; repeatable, chosen per
    /// connection by SNI; re-read on SIGHUP.
    #[arg(long, value_name = "CERT:KEY")]
    pub proxy_cert: Vec<proxy::tls::CertPaths>,
    /// Proxy worker threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub proxy_threads: Option<usize>,
    /// Host names `<service>.<domain>` route to that service.
    #[arg(long, default_value = "localhost")]
    pub proxy_domain: String,
    /// Service for requests no other route matches (KV `wharf/proxy/default-service`
    /// overrides it at run time).
    #[arg(long, value_name = "NAME")]
    pub default_service: Option<String>,
    /// Also route to instances whose worst check is `warning`.
    #[arg(long)]
    pub route_warning: bool,
    /// Default balancing: round_robin, weighted, least_conn, hash:ip, hash:header:NAME,
    /// hash:cookie:NAME (per service: meta `wharf-lb`).
    #[arg(long, default_value = "round_robin", value_parser = parse_policy)]
    pub lb: proxy::Policy,
    /// Upstream connect timeout (Go duration, e.g. 2s).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub proxy_connect_timeout: Duration,
    /// Upstream read timeout: longest wait for response bytes.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub proxy_read_timeout: Duration,
    /// Upstream write timeout.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub proxy_write_timeout: Duration,
    /// How long idle upstream keep-alive connections are kept.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub proxy_idle_timeout: Duration,
    /// How long an idle client keep-alive connection is kept.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub proxy_client_keepalive: Duration,
    /// Longest a client may take to send a whole request header (counted from the
    /// connection, or from a kept-alive request's first byte); slower ones are cut off.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub proxy_header_timeout: Duration,
    /// Retries on another instance after an upstream timeout, for idempotent requests
    /// (failed connections are always retried while instances remain, and so are idempotent
    /// requests whose connection closed without an answer).
    #[arg(long, default_value_t = 2)]
    pub proxy_retries: usize,
    /// Consecutive failures that eject an instance from its pool (0 = never).
    #[arg(long, default_value_t = 5)]
    pub proxy_eject_after: u32,
    /// How long an ejected instance stays out.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub proxy_eject_for: Duration,
    /// Write a JSON line per proxied request to this file (`-` = standard output).
    #[arg(long, value_name = "PATH")]
    pub access_log: Option<PathBuf>,

    #[command(flatten)]
    pub templates: crate::template_cmd::AgentTemplateArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    discovery::duration::parse_go_duration(s, false)
}

fn parse_policy(s: &str) -> Result<proxy::Policy, String> {
    proxy::Policy::parse(s)
}

/// The agent's settings after defaults and validation.
struct Resolved {
    check_policy: discovery::health::CheckPolicy,
    /// The Wasm plugin host, when `--plugin-dir` is given.
    plugin_host: Option<Arc<plugins::PluginHost>>,
    proxy: Option<ProxySettings>,
    /// `None` when Docker is not watched.
    docker: Option<discovery::docker::labels::Mode>,
    info: AgentInfo,
    raft: RaftSettings,
    http_addr: SocketAddr,
    raft_bind: SocketAddr,
    data_dir: PathBuf,
    config_dirs: Vec<PathBuf>,
    /// `None` with --no-dns.
    dns: Option<DnsConfig>,
    templates: crate::template_cmd::AgentTemplateArgs,
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WHARF_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("wharf");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/wharf"),
        None => PathBuf::from("wharf-data"),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "wharf".to_string())
}

/// Reads a value kept in the data dir, creating it with `make` the first time.
fn persistent_value(path: &Path, make: impl FnOnce() -> String) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            let v = make();
            std::fs::write(path, &v).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(v)
        }
    }
}

fn with_default_port(addr: &str, port: u16) -> String {
    if addr.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        addr.to_string()
    } else {
        format!("{addr}:{port}")
    }
}

fn resolve(args: &AgentArgs) -> Result<Resolved> {
    let joining = !args.retry_join.is_empty();
    let bootstrap_expect = match (args.dev, args.server, args.bootstrap_expect, joining) {
        (true, _, Some(n), _) if n != 1 => bail!("--dev runs a single server; drop --bootstrap-expect {n}"),
        (true, _, _, true) => bail!("--dev runs alone; drop --retry-join or --dev"),
        (true, _, _, _) => 1,
        (false, _, Some(0), _) => bail!("--bootstrap-expect must be at least 1"),
        (false, _, Some(n), _) => n,
        // A server or client that only joins.
        (false, _, None, true) => 0,
        // Plain `wharf agent`: the embedded single-node default.
        (false, _, None, false) => 1,
    };
    let voter = args.server || args.dev || bootstrap_expect > 0;
    if bootstrap_expect > 1 && !joining {
        bail!("--bootstrap-expect {bootstrap_expect} needs --retry-join with the other servers' addresses");
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}: choose another with --data-dir", data_dir.display()))?;
    let node_uuid = persistent_value(&data_dir.join("node-id"), || uuid::Uuid::new_v4().to_string())?;
    let node_uuid: uuid::Uuid = node_uuid.parse().with_context(|| {
        format!("{} does not hold a UUID; delete it to get a new node ID", data_dir.join("node-id").display())
    })?;
    let cluster_key = match &args.cluster_key {
        Some(k) if k.len() < 16 => bail!("--cluster-key must be at least 16 characters"),
        Some(k) => k.clone(),
        None if joining || bootstrap_expect > 1 => {
            bail!("a cluster needs a shared secret: pass the same --cluster-key (or WHARF_CLUSTER_KEY) to every member")
        }
        None => persistent_value(&data_dir.join("cluster-key"), || {
            (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
        })?,
    };
    let advertise = match args.advertise {
        Some(ip) => ip,
        None if args.bind.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        None => args.bind,
    };
    let node_name = args.node.clone().unwrap_or_else(hostname);
    let raft_addr = SocketAddr::new(advertise, args.raft_port).to_string();
    let http_addr = SocketAddr::new(args.client, args.http_port);
    let info = AgentInfo {
        node_name,
        node_id: node_uuid.to_string(),
        datacenter: args.datacenter.clone(),
        advertise: advertise.to_string(),
        raft_addr: raft_addr.clone(),
        http_addr: http_addr.to_string(),
        server: voter,
        version: env!("CARGO_PKG_VERSION").to_string(),
        data_dir: data_dir.display().to_string(),
    };
    let raft = RaftSettings {
        node_id: raft_id_from_uuid(&node_uuid),
        raft_addr,
        data_dir: data_dir.clone(),
        cluster_key,
        bootstrap_expect,
        retry_join: args.retry_join.iter().map(|a| with_default_port(a, 8300)).collect(),
        voter,
        snapshot_threshold: args.raft_snapshot_threshold,
    };
    if !args.proxy_cert.is_empty() && args.proxy_tls_addr.is_none() {
        bail!("--proxy-cert needs --proxy-tls-addr (the TLS listener)");
    }
    let proxy = if args.no_proxy {
        None
    } else {
        Some(ProxySettings {
            listen: args.proxy_addr.clone(),
            threads: args
                .proxy_threads
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
            table: proxy::TableSettings {
                domain: args.proxy_domain.clone(),
                default_service: args.default_service.clone(),
                route_warning: args.route_warning,
                default_policy: args.lb.clone(),
            },
            upstream: proxy::UpstreamSettings {
                connect_timeout: args.proxy_connect_timeout,
                read_timeout: args.proxy_read_timeout,
                write_timeout: args.proxy_write_timeout,
                idle_timeout: args.proxy_idle_timeout,
                client_keepalive: args.proxy_client_keepalive,
                retries: args.proxy_retries,
                eject_after: args.proxy_eject_after,
                eject_for: args.proxy_eject_for,
            },
            access_log: args.access_log.clone(),
            tls_listen: args.proxy_tls_addr,
            certs: args.proxy_cert.clone(),
            header_timeout: args.proxy_header_timeout,
        })
    };
    let dns = dns_config(args)?;
    let plugin_host = match &args.plugin_dir {
        Some(dir) => Some(crate::wasm::plugin_host(dir, args.plugin_memory)?),
        None => None,
    };
    crate::template_cmd::check_agent_templates(&args.templates)?;
    let docker = args.docker.enabled().then(|| discovery::docker::labels::Mode {
        internal: args.docker_internal,
        network: args.docker_network.clone(),
        explicit: args.docker_explicit,
        node: info.node_name.clone(),
        advertise: info.advertise.clone(),
        datacenter: info.datacenter.clone(),
    });
    Ok(Resolved {
        check_policy: discovery::health::CheckPolicy {
            enable_script_checks: args.enable_script_checks,
            wasm: plugin_host
                .clone()
                .map(|h| Arc::new(crate::wasm::WasmChecks(h)) as Arc<dyn discovery::health::WasmRunner>),
        },
        plugin_host,
        docker,
        proxy,
        info,
        raft,
        http_addr,
        raft_bind: SocketAddr::new(args.bind, args.raft_port),
        data_dir,
        config_dirs: args.config_dir.clone(),
        dns,
        templates: args.templates.clone(),
    })
}

/// The DNS flags, validated (`None` with --no-dns).
fn dns_config(args: &AgentArgs) -> Result<Option<DnsConfig>> {
    if args.no_dns {
        return Ok(None);
    }
    let options = DnsOptions {
        addr: args.dns_addr,
        port: args.dns_port,
        domain: args.domain.clone(),
        alt_domain: args.alt_domain.clone(),
        datacenter: args.datacenter.clone(),
        only_passing: args.dns_only_passing,
        a_record_limit: args.dns_a_record_limit,
        node_ttl: args.dns_node_ttl.clone(),
        service_ttl: args.dns_service_ttl.clone(),
        recursors: args.recursor.clone(),
        threads: args.dns_threads,
    };
    Ok(Some(DnsConfig::new(&options)?))
}

/// The proxy's settings, resolved from the flags.
struct ProxySettings {
    listen: Vec<SocketAddr>,
    threads: usize,
    table: proxy::TableSettings,
    upstream: proxy::UpstreamSettings,
    access_log: Option<PathBuf>,
    tls_listen: Option<SocketAddr>,
    certs: Vec<proxy::tls::CertPaths>,
    header_timeout: Duration,
}

fn open_access_log(path: &Path) -> Result<proxy::AccessLog> {
    if path == Path::new("-") {
        return Ok(proxy::AccessLog::new(Box::new(std::io::stdout())));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the access log {}", path.display()))?;
    Ok(proxy::AccessLog::new(Box::new(std::io::LineWriter::new(file))))
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for the {what}: is another agent running? choose another port")
    })
}

/// Registers this agent's node and its liveness check (Consul's serfHealth), retrying
/// until a leader accepts it.
async fn register_self(cluster: &dyn Cluster, info: &AgentInfo, mut stop: watch::Receiver<bool>) {
    let check = HealthCheck {
        node: info.node_name.clone(),
        check_id: "serfHealth".into(),
        name: "Serf Health Status".into(),
        status: CheckStatus::Passing,
        output: "Agent alive and reachable".into(),
        ..Default::default()
    };
    let cmd = Command::Register {
        node: info.self_node(),
        service: None,
        checks: vec![check],
        skip_node_update: false,
        replace_service_checks: false,
    };
    loop {
        match cluster.write(cmd.clone()).await {
            Ok(_) => return,
            Err(e) => tracing::info!("waiting for the cluster before registering this node: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

pub fn run(args: AgentArgs) -> Result<()> {
    let r = resolve(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wharf")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(r))
}

async fn serve(r: Resolved) -> Result<()> {
    // Bind both ports first, so a busy port fails the start loudly.
    let raft_listener = bind(r.raft_bind, "Raft port").await?;
    let http_listener = bind(r.http_addr, "HTTP API").await?;
    let dns = r.dns.clone().map(DnsServer::bind).transpose()?;
    let (node, catalog) = RaftNode::start(r.raft.clone()).await.map_err(|e| anyhow!("{e}"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(dns) = dns {
        tracing::info!(dns = ?dns.local_addr(), "DNS listening (UDP and TCP)");
        let (catalog, stop) = (catalog.clone(), stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = dns.run(catalog, stop).await {
                tracing::error!("the DNS server stopped: {e}");
            }
        });
    }

    let raft_router = network::router(node.clone());
    let mut raft_stop = stop_rx.clone();
    let raft_server = tokio::spawn(async move {
        axum::serve(raft_listener, raft_router)
            .with_graceful_shutdown(async move {
                let _ = raft_stop.changed().await;
            })
            .await
    });
    tokio::spawn(node.clone().bootstrap_or_join());

    let info = Arc::new(r.info.clone());
    let (control_tx, mut control_rx) = mpsc::channel(8);
    let cluster: Arc<dyn Cluster> = node.clone();
    let mut metrics: Vec<api::MetricsRenderer> = Vec::new();
    if let Some(host) = r.plugin_host.clone() {
        tracing::info!(dir = %host.dir().display(), "Wasm plugins enabled");
        metrics.push(Arc::new(move |out: &mut String| host.metrics.render(out)));
    }
    let proxy = match r.proxy {
        None => None,
        Some(p) => {
            let config = proxy::ProxyConfig {
                listen: p.listen.clone(),
                threads: p.threads,
                table: p.table,
                upstream: p.upstream,
                access_log: p.access_log.as_deref().map(open_access_log).transpose()?,
                tls_listen: p.tls_listen,
                certs: p.certs.clone(),
                header_timeout: p.header_timeout,
            };
            let handle = proxy::start(config, catalog.clone(), stop_rx.clone()).map_err(|e| anyhow!("{e}"))?;
            let m = handle.metrics.clone();
            metrics.push(Arc::new(move |out: &mut String| m.render(out)));
            tracing::info!(listen = ?p.listen, threads = p.threads, "proxy listening");
            Some(handle)
        }
    };
    crate::template_cmd::spawn_in_agent(&r.templates, &catalog, &info.node_name, &info.datacenter, stop_rx.clone())?;
    let state_catalog = catalog.clone();
    let ttl = discovery::health::TtlHeartbeats::default();
    let health_metrics = Arc::new(discovery::health::HealthMetrics::default());
    {
        let m = health_metrics.clone();
        metrics.push(Arc::new(move |out: &mut String| m.render(out)));
    }
    let state = ApiState {
        catalog,
        cluster: cluster.clone(),
        agent: info.clone(),
        control: control_tx,
        metrics,
        ttl: ttl.clone(),
        check_policy: r.check_policy.clone(),
    };
    let mut http_stop = stop_rx.clone();
    let http_server = tokio::spawn(async move {
        axum::serve(http_listener, api::router(state))
            .with_graceful_shutdown(async move {
                let _ = http_stop.changed().await;
            })
            .await
    });
    tracing::info!(
        node = %info.node_name, http = %info.http_addr, raft = %info.raft_addr, data_dir = %info.data_dir,
        "wharf agent started"
    );

    register_self(cluster.as_ref(), &info, stop_rx.clone()).await;
    let checker = Arc::new(discovery::health::HealthChecker {
        node: info.node_name.clone(),
        cluster: cluster.clone(),
        catalog: state_catalog.clone(),
        policy: r.check_policy.clone(),
        ttl,
        metrics: health_metrics,
        clients: discovery::health::probe::Clients::new(),
    });
    tokio::spawn(checker.run(stop_rx.clone()));
    if let Some(mode) = r.docker.clone() {
        let watcher = discovery::docker::DockerWatcher {
            mode,
            node: info.self_node(),
            cluster: cluster.clone(),
            catalog: state_catalog.clone(),
        };
        tokio::spawn(watcher.run(stop_rx.clone()));
    }
    let policy = r.check_policy.clone();
    let reload = |cluster: Arc<dyn Cluster>, info: Arc<AgentInfo>, dirs: Vec<PathBuf>, data_dir: PathBuf| {
        let policy = policy.clone();
        async move {
            if dirs.is_empty() {
                return Ok("no --config-dir given; nothing to reload".to_string());
            }
            crate::config_dir::sync(&dirs, &data_dir, &info, &policy, cluster.as_ref()).await
        }
    };
    if !r.config_dirs.is_empty() {
        let summary = reload(cluster.clone(), info.clone(), r.config_dirs.clone(), r.data_dir.clone())
            .await
            .context("loading --config-dir")?;
        tracing::info!("{summary}");
    }

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if let Some(p) = &proxy {
                    match p.reload_tls() {
                        Ok(0) => {}
                        Ok(n) => tracing::info!("SIGHUP: {n} TLS certificates reloaded"),
                        Err(e) => tracing::error!("SIGHUP: TLS certificates unchanged: {e}"),
                    }
                }
                match reload(cluster.clone(), info.clone(), r.config_dirs.clone(), r.data_dir.clone()).await {
                    Ok(s) => tracing::info!("SIGHUP: {s}"),
                    Err(e) => tracing::error!("SIGHUP reload failed, catalog unchanged: {e:#}"),
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupt: shutting down"); break; }
            msg = control_rx.recv() => match msg {
                Some(AgentControl::Reload(reply)) => {
                    let res = reload(cluster.clone(), info.clone(), r.config_dirs.clone(), r.data_dir.clone())
                        .await
                        .map_err(|e| format!("{e:#}"));
                    if let Err(e) = &res { tracing::error!("reload failed, catalog unchanged: {e}"); }
                    let _ = reply.send(res);
                }
                Some(AgentControl::Leave(reply)) => {
                    tracing::info!("leave requested: leaving the cluster");
                    if let Err(e) = node.leave().await { tracing::warn!("graceful leave: {e}"); }
                    let _ = reply.send(());
                    // Let the HTTP answer go out before the listener closes.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                None => break,
            }
        }
    }
    let _ = stop_tx.send(true);
    if let Some(p) = proxy {
        let _ = tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(move || p.join())).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), http_server).await;
    node.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), raft_server).await;
    Ok(())
}
