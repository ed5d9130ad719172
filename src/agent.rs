//! `wharf agent`: wires the catalog's Raft node, the Raft port, the HTTP API and the
//! config-dir loader into one process, and supervises them (signals, reload, leave).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use catalog::Cluster;
use catalog::command::Command;
use catalog::model::AgentInfo;
use catalog::model::{CheckStatus, HealthCheck};
use clap::Args;
use consul_api::{AgentControl, ApiState};
use dns::{DnsConfig, DnsOptions, DnsServer};
use raft::node::{RaftNode, RaftSettings};
use raft::server as raft_server;
use raft::store::raft_id_from_uuid;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::agent_config::FileConfig;

/// Options of `wharf agent`. Durations and sizes state their unit. Consul's single-dash
/// spellings work (`-server -bootstrap-expect=3 -client=0.0.0.0`); settings not given here
/// come from `-config-file` / `-config-dir` JSON files, then the defaults.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Single-node development mode: bootstrap a one-server cluster on loopback.
    /// This is also what `wharf agent` does when neither --server nor a join is given.
    #[arg(long)]
    pub dev: bool,
    /// Run as a voting server (clients join as non-voting learners).
    #[arg(long)]
    pub server: bool,
    /// Bootstrap mode: this server elects itself leader alone (same as --bootstrap-expect 1).
    #[arg(long)]
    pub bootstrap: bool,
    /// Number of servers to wait for before bootstrapping the cluster (1 = alone).
    #[arg(long, value_name = "N")]
    pub bootstrap_expect: Option<usize>,
    /// Address (host name or IP, optionally :port, default port 8300) of an agent to join at
    /// start; repeatable. Retried until it succeeds.
    #[arg(long, value_name = "ADDR")]
    pub retry_join: Vec<String>,
    /// Like --retry-join (Consul's -join).
    #[arg(long, value_name = "ADDR")]
    pub join: Vec<String>,
    /// Directory for the Raft log, snapshots and node identity (created if missing; also
    /// WHARF_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node name (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Node ID, a UUID (default: generated once and kept in the data dir).
    #[arg(long, value_name = "UUID")]
    pub node_id: Option<String>,
    /// Datacenter name (default dc1).
    #[arg(long, value_name = "DC")]
    pub datacenter: Option<String>,
    /// Address other nodes and clients reach this agent at (default: the bind address, or
    /// the first private IPv4 address when binding all interfaces, else 127.0.0.1).
    #[arg(long, value_name = "IP")]
    pub advertise: Option<IpAddr>,
    /// Address the Raft port binds to (default 127.0.0.1 for a lone agent, 0.0.0.0 when it
    /// joins or expects other servers).
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// Raft port (server-to-server traffic; Consul's server port) (default 8300; also
    /// WHARF_SERVER_PORT).
    #[arg(long, alias = "server-port", value_name = "PORT", env = "WHARF_SERVER_PORT")]
    pub raft_port: Option<u16>,
    /// Address the HTTP API and DNS bind to (default 127.0.0.1).
    #[arg(long, value_name = "IP")]
    pub client: Option<IpAddr>,
    /// HTTP API port (default 8500; also WHARF_HTTP_PORT).
    #[arg(long, value_name = "PORT", env = "WHARF_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// Shared secret every member of the cluster presents on the Raft port. Generated
    /// and kept in the data dir when not given (single node only). Without one, a cluster
    /// runs unauthenticated, with a warning.
    #[arg(long, env = "WHARF_CLUSTER_KEY", hide_env_values = true)]
    pub cluster_key: Option<String>,
    /// Consul's gossip key (`wharf keygen`: 32 random bytes, base64); wharf uses it as the
    /// cluster key every member must present.
    #[arg(long, value_name = "KEY")]
    pub encrypt: Option<String>,
    /// Directory of Consul JSON config files: agent settings and service/check definitions;
    /// repeatable. Definitions are re-read on SIGHUP and `wharf reload`.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Vec<PathBuf>,
    /// A Consul JSON config file (agent settings and definitions); repeatable.
    #[arg(long, value_name = "FILE")]
    pub config_file: Vec<PathBuf>,
    /// Consul's web UI flag. The UI is not built yet: the agent says so at start and serves
    /// the HTTP API only.
    #[arg(long)]
    pub ui: bool,
    /// Raft log entries between two snapshots.
    #[arg(long, default_value_t = 8192)]
    pub raft_snapshot_threshold: u64,

    /// Address the DNS server (UDP and TCP) binds to (default: the --client address).
    #[arg(long, value_name = "IP")]
    pub dns_addr: Option<IpAddr>,
    /// DNS port, UDP and TCP (53 needs root or CAP_NET_BIND_SERVICE) (default 8600; also
    /// WHARF_DNS_PORT).
    #[arg(long, value_name = "PORT", env = "WHARF_DNS_PORT")]
    pub dns_port: Option<u16>,
    /// Do not run the DNS server.
    #[arg(long)]
    pub no_dns: bool,
    /// Domain the DNS server answers (`web.service.<domain>`) (default consul).
    #[arg(long, value_name = "NAME")]
    pub domain: Option<String>,
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

    /// Allow script/args checks (`-enable-script-checks` or `=true`/`=false`). WARNING: with
    /// an HTTP API reachable by others, script checks are remote code execution; enable only
    /// on a trusted API address with ACLs.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_bool_flag)]
    pub enable_script_checks: Option<bool>,
    /// Directory of Wasm plugins (`NAME.wasm` components): health checks registered with
    /// `"Wasm": {"Module": "NAME", "Config": "..."}` and template plugins. Without it, Wasm
    /// checks are refused at registration.
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Linear memory limit of one Wasm plugin instance, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub plugin_memory: usize,

    /// Watch the local Docker engine (`/var/run/docker.sock`, or DOCKER_HOST): off, auto
    /// (when the socket exists) or on (also WHARF_DOCKER).
    #[arg(long, default_value = "auto", value_name = "off|auto|on", env = "WHARF_DOCKER")]
    pub docker: local_agent::docker::DockerWatch,
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
    /// CAP_NET_BIND_SERVICE (also WHARF_PROXY_ADDR).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:80", env = "WHARF_PROXY_ADDR")]
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

fn parse_bool_flag(s: &str) -> Result<bool, String> {
    crate::agent_config::parse_bool(s)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    catalog::duration::parse_go_duration(s, false)
}

fn parse_policy(s: &str) -> Result<proxy::Policy, String> {
    proxy::Policy::parse(s)
}

/// The agent's settings after defaults and validation.
struct Resolved {
    check_policy: local_agent::health::CheckPolicy,
    /// The Wasm plugin host, when `--plugin-dir` is given.
    plugin_host: Option<Arc<plugins::PluginHost>>,
    proxy: Option<ProxySettings>,
    /// `None` when Docker is not watched.
    docker: Option<local_agent::docker::labels::Mode>,
    info: AgentInfo,
    raft: RaftSettings,
    http_addr: SocketAddr,
    raft_bind: SocketAddr,
    data_dir: PathBuf,
    config: crate::config_dir::Sources,
    /// Runs as its own one-agent cluster (a `wharf join` restarts it into the other one).
    alone: bool,
    /// The cluster key this agent presents once it is part of a cluster of several.
    join_key: String,
    /// Leave gracefully on SIGTERM (Consul's `leave_on_terminate`; default: clients only).
    leave_on_terminate: bool,
    /// Leave gracefully on SIGINT (not `skip_leave_on_interrupt`; default: clients only).
    leave_on_interrupt: bool,
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

pub(crate) fn with_default_port(addr: &str, port: u16) -> String {
    if addr.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        addr.to_string()
    } else {
        format!("{addr}:{port}")
    }
}

/// How this agent takes part in the cluster, from the mode flags alone (pure).
#[derive(Debug, PartialEq)]
struct Role {
    /// Servers to wait for before bootstrapping; 0 = only join an existing cluster.
    bootstrap_expect: usize,
    voter: bool,
    joins: Vec<String>,
    /// Runs alone on loopback unless told otherwise (dev mode or the embedded default).
    alone: bool,
}

fn role(args: &AgentArgs, file: &FileConfig) -> Result<Role> {
    let server = args.server || file.server.unwrap_or(false);
    let bootstrap = args.bootstrap || file.bootstrap.unwrap_or(false);
    let expect = args.bootstrap_expect.or(file.bootstrap_expect);
    let mut joins: Vec<String> = Vec::new();
    for j in args.retry_join.iter().chain(&args.join).chain(&file.retry_join) {
        if !joins.contains(j) {
            joins.push(j.clone());
        }
    }
    let joining = !joins.is_empty();
    if bootstrap && expect.is_some() {
        bail!("-bootstrap and -bootstrap-expect cannot both be given: -bootstrap means -bootstrap-expect=1");
    }
    if (bootstrap || expect.is_some()) && !server && !args.dev {
        bail!("-bootstrap and -bootstrap-expect need server mode: add -server");
    }
    let bootstrap_expect = match (args.dev, expect, joining) {
        (true, Some(n), _) if n != 1 => bail!("--dev runs a single server; drop --bootstrap-expect {n}"),
        (true, _, true) => bail!("--dev runs alone; drop --retry-join/--join or --dev"),
        (true, _, _) => 1,
        (false, Some(0), _) => bail!("--bootstrap-expect must be at least 1"),
        (false, Some(n), _) => n,
        (false, None, _) if bootstrap => 1,
        // A server or client that only joins.
        (false, None, true) => 0,
        // Plain `wharf agent` or `-server` alone: the embedded single-node default.
        (false, None, false) => 1,
    };
    let alone = args.dev || (!joining && bootstrap_expect == 1 && !server);
    Ok(Role { bootstrap_expect, voter: server || args.dev || bootstrap_expect > 0, joins, alone })
}

/// Consul's private IPv4 ranges (RFC 1918 and RFC 6598's shared space).
fn is_private_v4(ip: std::net::Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private() || (o[0] == 100 && (64..128).contains(&o[1]))
}

/// The address to advertise when bound to all interfaces: the host's one private IPv4
/// address, as Consul picks it. Several are an error naming them, since any choice could
/// be the one the other hosts cannot reach.
fn private_ipv4(addrs: &[IpAddr]) -> Result<Option<IpAddr>> {
    let mut private: Vec<IpAddr> = Vec::new();
    for a in addrs {
        if let IpAddr::V4(v4) = a
            && is_private_v4(*v4)
            && !private.contains(a)
        {
            private.push(*a);
        }
    }
    match private.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => bail!(
            "several private IPv4 addresses found ({}): choose the one other agents reach with -advertise (or -bind)",
            many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn interface_addrs() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(list) => {
            list.filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))).collect()
        }
        Err(e) => {
            tracing::warn!("cannot list network interfaces ({e}); advertising 127.0.0.1: set -advertise");
            Vec::new()
        }
    }
}

/// The `-encrypt` key (flag, else config file), checked: base64 of 16, 24 or 32 bytes.
fn encrypt_key(args: &AgentArgs, file: &FileConfig) -> Result<Option<String>> {
    let Some(k) = args.encrypt.as_ref().or(file.encrypt.as_ref()) else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(k.trim())
        .map_err(|e| anyhow!("-encrypt: the key is not base64 ({e}); make one with `wharf keygen`"))?;
    if ![16, 24, 32].contains(&bytes.len()) {
        bail!("-encrypt: the key is {} bytes; it must be 16, 24 or 32 (make one with `wharf keygen`)", bytes.len());
    }
    Ok(Some(k.trim().to_string()))
}

/// The cluster key: `--cluster-key`, else `-encrypt`'s key, else one kept in the data dir
/// for an agent that runs alone, else none (an unauthenticated cluster; `resolve` warns).
fn choose_cluster_key(args: &AgentArgs, file: &FileConfig, alone: bool, data_dir: &Path) -> Result<String> {
    if let Some(k) = &args.cluster_key {
        if k.len() < 16 {
            bail!("--cluster-key must be at least 16 characters");
        }
        return Ok(k.clone());
    }
    if let Some(k) = encrypt_key(args, file)? {
        return Ok(k);
    }
    if alone {
        return persistent_value(&data_dir.join("cluster-key"), || {
            (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
        });
    }
    Ok(String::new())
}

fn resolve(args: &AgentArgs, file: &FileConfig) -> Result<Resolved> {
    let Role { bootstrap_expect, voter, joins, alone } = role(args, file)?;
    // Every check that needs no disk comes before the data dir is touched.
    encrypt_key(args, file)?;
    let data_dir = args.data_dir.clone().or_else(|| file.data_dir.clone()).unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}: choose another with --data-dir", data_dir.display()))?;
    let node_uuid = match args.node_id.as_ref().or(file.node_id.as_ref()) {
        Some(id) => id.clone(),
        None => persistent_value(&data_dir.join("node-id"), || uuid::Uuid::new_v4().to_string())?,
    };
    let node_uuid: uuid::Uuid = node_uuid.parse().with_context(|| {
        format!(
            "node ID {node_uuid:?} is not a UUID: pass one with -node-id, or delete {} to get a new one",
            data_dir.join("node-id").display()
        )
    })?;
    let cluster_key = choose_cluster_key(args, file, alone, &data_dir)?;
    let join_key = if alone { choose_cluster_key(args, file, false, &data_dir)? } else { cluster_key.clone() };
    if cluster_key.is_empty() {
        tracing::warn!(
            "NO CLUSTER KEY: node-to-node traffic on the Raft port is neither authenticated nor encrypted, so anyone \
             who reaches it can join or rewrite the catalog. Give every agent the same -encrypt key (`wharf keygen`)."
        );
    }
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let bind = args.bind.or(file.bind_addr).unwrap_or(if alone { loopback } else { IpAddr::from([0, 0, 0, 0]) });
    let advertise = match args.advertise.or(file.advertise_addr) {
        Some(ip) => ip,
        None if bind.is_unspecified() => private_ipv4(&interface_addrs())?.unwrap_or(loopback),
        None => bind,
    };
    if args.ui || file.ui.unwrap_or(false) {
        tracing::warn!("-ui: the web UI is not part of this build yet; the HTTP API is served without it");
    }
    let node_name = args.node.clone().or_else(|| file.node_name.clone()).unwrap_or_else(hostname);
    let raft_port = args.raft_port.or(file.server_port).unwrap_or(8300);
    let raft_addr = SocketAddr::new(advertise, raft_port).to_string();
    let client = args.client.or(file.client_addr).unwrap_or(loopback);
    let http_addr = SocketAddr::new(client, args.http_port.or(file.http_port).unwrap_or(8500));
    let datacenter = args.datacenter.clone().or_else(|| file.datacenter.clone()).unwrap_or_else(|| "dc1".into());
    let info = AgentInfo {
        node_name,
        node_id: node_uuid.to_string(),
        datacenter: datacenter.clone(),
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
        retry_join: joins.iter().map(|a| with_default_port(a, 8300)).collect(),
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
    let dns = dns_config(args, file, &datacenter, client)?;
    let plugin_host = match &args.plugin_dir {
        Some(dir) => Some(crate::wasm::plugin_host(dir, args.plugin_memory)?),
        None => None,
    };
    crate::template_cmd::check_agent_templates(&args.templates)?;
    let docker = args.docker.enabled().then(|| local_agent::docker::labels::Mode {
        internal: args.docker_internal,
        network: args.docker_network.clone(),
        explicit: args.docker_explicit,
        node: info.node_name.clone(),
        advertise: info.advertise.clone(),
        datacenter: info.datacenter.clone(),
    });
    Ok(Resolved {
        check_policy: local_agent::health::CheckPolicy {
            enable_script_checks: args.enable_script_checks.or(file.enable_script_checks).unwrap_or(false),
            wasm: plugin_host
                .clone()
                .map(|h| Arc::new(crate::wasm::WasmChecks(h)) as Arc<dyn local_agent::health::WasmRunner>),
        },
        plugin_host,
        docker,
        proxy,
        info,
        raft,
        http_addr,
        raft_bind: SocketAddr::new(bind, raft_port),
        data_dir,
        config: crate::config_dir::Sources { files: args.config_file.clone(), dirs: args.config_dir.clone() },
        alone,
        join_key,
        leave_on_terminate: file.leave_on_terminate.unwrap_or(!voter),
        leave_on_interrupt: !file.skip_leave_on_interrupt.unwrap_or(voter),
        dns,
        templates: args.templates.clone(),
    })
}

/// The DNS flags, validated (`None` with --no-dns).
fn dns_config(args: &AgentArgs, file: &FileConfig, datacenter: &str, client: IpAddr) -> Result<Option<DnsConfig>> {
    if args.no_dns {
        return Ok(None);
    }
    let options = DnsOptions {
        addr: args.dns_addr.unwrap_or(client),
        port: args.dns_port.or(file.dns_port).unwrap_or(8600),
        domain: args.domain.clone().or_else(|| file.domain.clone()).unwrap_or_else(|| "consul".into()),
        alt_domain: args.alt_domain.clone(),
        datacenter: datacenter.to_string(),
        only_passing: args.dns_only_passing,
        a_record_limit: args.dns_a_record_limit,
        node_ttl: args.dns_node_ttl.clone(),
        service_ttl: args.dns_service_ttl.clone(),
        recursors: args.recursor.iter().chain(&file.recursors).cloned().collect(),
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

/// Registers this agent's node and its liveness check (Consul's serfHealth), and on a
/// server Consul's own `consul` service (its Raft port), so `consul.service.consul` lists
/// the servers; retries until a leader accepts it.
async fn register_self(cluster: &dyn Cluster, info: &AgentInfo, mut stop: watch::Receiver<bool>) {
    let check = HealthCheck {
        node: info.node_name.clone(),
        check_id: "serfHealth".into(),
        name: "Serf Health Status".into(),
        status: CheckStatus::Passing,
        output: "Agent alive and reachable".into(),
        ..Default::default()
    };
    let port = info.raft_addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(8300);
    let consul = info.server.then(|| catalog::model::Service {
        id: "consul".into(),
        service: "consul".into(),
        port,
        weights: catalog::model::Weights { passing: 1, warning: 1 },
        datacenter: info.datacenter.clone(),
        ..Default::default()
    });
    let cmd = Command::Register {
        node: info.self_node(),
        service: consul,
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

/// Runs the agent: reads its config files, starts logging at `log_level` (the command
/// line's, else the files' `log_level`, else info), resolves the settings and serves.
pub fn run(args: AgentArgs, log_level: Option<&str>) -> Result<()> {
    let files = crate::agent_config::config_files(&args.config_file, &args.config_dir).map_err(|e| anyhow!(e))?;
    let local = std::env::var("WHARF_LOCAL_CONFIG").or_else(|_| std::env::var("CONSUL_LOCAL_CONFIG")).ok();
    let file = crate::agent_config::load(&files, local.as_deref()).map_err(|e| anyhow!(e))?;
    crate::init_logging(log_level.or(file.log_level.as_deref()).unwrap_or("info"));
    let mut args = args;
    let data_dir = args.data_dir.clone().or_else(|| file.data_dir.clone()).unwrap_or_else(default_data_dir);
    args.retry_join.extend(crate::rejoin::take(&data_dir)?);
    let r = resolve(&args, &file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wharf")
        .build()
        .context("cannot start the async runtime")?;
    let restart = runtime.block_on(serve(r))?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    if restart {
        return crate::rejoin::restart();
    }
    Ok(())
}

/// Leaves the cluster gracefully. As Consul's leader reaps a member that left, its node and
/// everything registered on it leave the catalog; a server also leaves the Raft voters.
async fn leave(cluster: &dyn Cluster, node: &RaftNode, info: &AgentInfo) {
    tracing::info!("leaving the cluster");
    let gone = Command::DeregisterNode { node: info.node_name.clone() };
    match tokio::time::timeout(Duration::from_secs(5), cluster.write(gone)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("leave: could not deregister this node: {e}"),
        Err(_) => tracing::warn!("leave: no answer within 5s deregistering this node"),
    }
    if let Err(e) = node.leave().await {
        tracing::warn!("graceful leave: {e}");
    }
}

/// Serves until a signal or `leave`; `Ok(true)` when the agent must restart itself to join
/// another cluster.
async fn serve(r: Resolved) -> Result<bool> {
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

    let raft_router = raft_server::router(node.clone());
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
    let mut metrics: Vec<consul_api::MetricsRenderer> = Vec::new();
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
    let ttl = local_agent::health::TtlHeartbeats::default();
    let health_metrics = Arc::new(local_agent::health::HealthMetrics::default());
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
        local: Arc::new(AgentChecks { policy: r.check_policy.clone(), ttl: ttl.clone() }),
        applied: consul_api::session::AppliedClock::default(),
    };
    tokio::spawn(state.applied.clone().run(state.catalog.clone()));
    let mut http_stop = stop_rx.clone();
    let http_server = tokio::spawn(async move {
        axum::serve(http_listener, consul_api::router(state))
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
    let checker = Arc::new(local_agent::health::HealthChecker {
        node: info.node_name.clone(),
        cluster: cluster.clone(),
        catalog: state_catalog.clone(),
        policy: r.check_policy.clone(),
        ttl,
        metrics: health_metrics,
        clients: local_agent::health::probe::Clients::new(),
    });
    tokio::spawn(checker.run(stop_rx.clone()));
    let ttl_timers = local_agent::session_ttl::SessionTtl {
        cluster: cluster.clone(),
        catalog: state_catalog.clone(),
        raft_addr: info.raft_addr.clone(),
    };
    tokio::spawn(ttl_timers.run(stop_rx.clone()));
    if let Some(mode) = r.docker.clone() {
        let watcher = local_agent::docker::DockerWatcher {
            mode,
            node: info.self_node(),
            cluster: cluster.clone(),
            catalog: state_catalog.clone(),
        };
        tokio::spawn(watcher.run(stop_rx.clone()));
    }
    let policy = r.check_policy.clone();
    let reload =
        |cluster: Arc<dyn Cluster>, info: Arc<AgentInfo>, sources: crate::config_dir::Sources, data_dir: PathBuf| {
            let policy = policy.clone();
            async move {
                if sources.is_empty() {
                    return Ok("no --config-dir or --config-file given; nothing to reload".to_string());
                }
                crate::config_dir::sync(&sources, &data_dir, &info, &policy, cluster.as_ref()).await
            }
        };
    if !r.config.is_empty() {
        let summary = reload(cluster.clone(), info.clone(), r.config.clone(), r.data_dir.clone())
            .await
            .context("loading --config-dir")?;
        tracing::info!("{summary}");
    }

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let mut restart = false;
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
                match reload(cluster.clone(), info.clone(), r.config.clone(), r.data_dir.clone()).await {
                    Ok(s) => tracing::info!("SIGHUP: {s}"),
                    Err(e) => tracing::error!("SIGHUP reload failed, catalog unchanged: {e:#}"),
                }
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: shutting down");
                if r.leave_on_terminate { leave(cluster.as_ref(), &node, &info).await; }
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupt: shutting down");
                if r.leave_on_interrupt { leave(cluster.as_ref(), &node, &info).await; }
                break;
            }
            msg = control_rx.recv() => match msg {
                Some(AgentControl::Reload(reply)) => {
                    let res = reload(cluster.clone(), info.clone(), r.config.clone(), r.data_dir.clone())
                        .await
                        .map_err(|e| format!("{e:#}"));
                    if let Err(e) = &res { tracing::error!("reload failed, catalog unchanged: {e}"); }
                    let _ = reply.send(res);
                }
                Some(AgentControl::Join(addr, reply)) => {
                    let target = with_default_port(&addr, 8300);
                    match crate::rejoin::join(&node, r.alone, &r.join_key, &target, &r.data_dir).await {
                        Ok(crate::rejoin::Joined::Restart) => {
                            tracing::info!(%target, "join: restarting to leave this one-agent cluster for the one at {target}");
                            let _ = reply.send(Ok(format!("restarting to join {target}")));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            restart = true;
                            break;
                        }
                        Ok(outcome) => {
                            tracing::info!(%target, ?outcome, "join");
                            let _ = reply.send(Ok(format!("{outcome:?}")));
                        }
                        Err(e) => {
                            tracing::warn!(%target, "join failed: {e}");
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Some(AgentControl::Leave(reply)) => {
                    leave(cluster.as_ref(), &node, &info).await;
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
    Ok(restart)
}

/// The API's view of this agent's health checker: which definitions it admits, and where
/// TTL heartbeats go.
struct AgentChecks {
    policy: local_agent::health::CheckPolicy,
    ttl: local_agent::health::TtlHeartbeats,
}

impl consul_api::LocalChecks for AgentChecks {
    fn admit(&self, checks: &[catalog::model::HealthCheck]) -> Result<(), String> {
        self.policy.allows(checks)
    }

    fn ttl_beat(&self, check_id: &str) {
        self.ttl.beat(check_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: AgentArgs,
    }

    fn args(line: &str) -> AgentArgs {
        let words = std::iter::once("wharf".to_string()).chain(line.split_whitespace().map(str::to_string));
        T::parse_from(crate::normalize_args(words)).a
    }

    fn role_of(line: &str) -> Result<Role> {
        role(&args(line), &FileConfig::default())
    }

    #[test]
    fn tutorial_mode_flags() {
        // Seed 000: one server in bootstrap mode.
        let r = role_of("-server -bootstrap -ui -client=0.0.0.0").expect("valid");
        assert_eq!((r.bootstrap_expect, r.voter, r.alone), (1, true, false));
        // Seed 003: node1 waits for 3 servers; node2 only joins it; node4 is a client.
        let r = role_of("-server -bind=172.17.0.2 -bootstrap-expect=3 -node=node1").expect("valid");
        assert_eq!((r.bootstrap_expect, r.voter, r.alone), (3, true, false));
        let r = role_of("-server -bind=172.17.0.3 -join=172.17.0.2 -node=node2").expect("valid");
        assert_eq!((r.bootstrap_expect, r.voter, r.joins.as_slice()), (0, true, &["172.17.0.2".to_string()][..]));
        let r = role_of("-bind=172.17.0.5 -retry-join=172.17.0.2 -node=node4").expect("valid");
        assert_eq!((r.bootstrap_expect, r.voter), (0, false));
        // Plain `wharf agent` and -dev: alone on loopback.
        assert!(role_of("").expect("valid").alone);
        assert!(role_of("-dev").expect("valid").alone);
    }

    #[test]
    fn conflicting_mode_flags_are_refused() {
        let e = role_of("-server -bootstrap -bootstrap-expect=3").expect_err("conflict");
        assert!(e.to_string().contains("cannot both be given"), "{e}");
        let e = role_of("-bootstrap-expect=3").expect_err("needs -server");
        assert!(e.to_string().contains("add -server"), "{e}");
        let e = role_of("-dev -retry-join=a").expect_err("dev alone");
        assert!(e.to_string().contains("--dev runs alone"), "{e}");
    }

    #[test]
    fn config_file_settings_sit_under_flags() {
        let mut file = FileConfig::default();
        file.merge_json("s.json", r#"{"server": true, "bootstrap_expect": 3, "retry_join": ["consul1"]}"#)
            .expect("valid");
        let r = role(&args(""), &file).expect("valid");
        assert_eq!((r.bootstrap_expect, r.voter, r.alone), (3, true, false));
        let r = role(&args("-retry-join=consul2"), &file).expect("valid");
        assert_eq!(r.joins, ["consul2", "consul1"], "flags first, lists joined");
    }

    #[test]
    fn script_checks_flag_takes_go_booleans() {
        assert_eq!(args("-enable-script-checks=true").enable_script_checks, Some(true));
        assert_eq!(args("-enable-script-checks").enable_script_checks, Some(true));
        assert_eq!(args("-enable-script-checks=false").enable_script_checks, Some(false));
        assert_eq!(args("").enable_script_checks, None);
        assert!(T::try_parse_from(["wharf", "--enable-script-checks=maybe"]).is_err());
    }

    #[test]
    fn advertise_picks_the_one_private_ipv4() {
        let lo = IpAddr::from([127, 0, 0, 1]);
        let a = IpAddr::from([172, 18, 0, 3]);
        let public = IpAddr::from([8, 8, 8, 8]);
        assert_eq!(private_ipv4(&[lo, public, a]).expect("one"), Some(a));
        assert_eq!(private_ipv4(&[lo]).expect("none"), None);
        let e = private_ipv4(&[a, IpAddr::from([10, 0, 0, 1])]).expect_err("several");
        assert!(e.to_string().contains("172.18.0.3") && e.to_string().contains("-advertise"), "{e}");
    }
}
