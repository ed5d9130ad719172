//! `wharf agent`'s settings in two steps. [`AgentConfig::from_args`] is pure: flags, config
//! files and the facts read off the host ([`Host`]) become a validated config, or an error
//! naming the flag to change; nothing is touched. [`AgentConfig::prepare`] then does the
//! side effects in one place: the data dir, the node ID and cluster key kept in it, the
//! plugin host.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use catalog::model::AgentInfo;
use dns::{DnsConfig, DnsOptions};
use local_agent::docker::labels::Mode as DockerMode;
use local_agent::health::{CheckPolicy, WasmRunner};
use raft::node::RaftSettings;
use raft::store::raft_id_from_uuid;

use super::args::AgentArgs;
use local_agent::config_file::FileConfig;

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const ALL_INTERFACES: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// What the config depends on besides flags and files, read off the host once.
#[derive(Clone, Debug)]
pub(super) struct Host {
    pub hostname: String,
    /// The host's IPv4 interface addresses (for the advertise default).
    pub interface_addrs: Vec<IpAddr>,
    /// `WHARF_DATA_DIR`, else `$XDG_DATA_HOME/wharf`, else `~/.local/share/wharf`.
    pub default_data_dir: PathBuf,
}

impl Host {
    pub fn read() -> Host {
        Host { hostname: hostname(), interface_addrs: interface_addrs(), default_data_dir: default_data_dir() }
    }
}

pub(super) fn default_data_dir() -> PathBuf {
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

/// How this agent takes part in the cluster, from the mode flags alone.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Role {
    /// Servers to wait for before bootstrapping; 0 = only join an existing cluster.
    pub bootstrap_expect: usize,
    pub voter: bool,
    pub joins: Vec<String>,
    /// Runs alone on loopback unless told otherwise (dev mode or the embedded default).
    pub alone: bool,
}

/// Where a cluster key comes from.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum KeyChoice {
    /// `--cluster-key` or `-encrypt`.
    Given(String),
    /// Made once and kept in the data dir (an agent that runs alone).
    KeptInDataDir,
    /// None: an unauthenticated cluster, warned about loudly.
    Unauthenticated,
}

/// The agent's validated settings; no side effect has happened yet.
#[derive(Clone, Debug)]
pub(super) struct AgentConfig {
    pub role: Role,
    pub data_dir: PathBuf,
    /// `-node-id`, checked to be a UUID; `None`: the one kept in the data dir.
    pub node_id: Option<uuid::Uuid>,
    pub node_name: String,
    pub datacenter: String,
    pub advertise: IpAddr,
    pub raft_bind: SocketAddr,
    pub raft_addr: SocketAddr,
    /// The gossip socket (UDP) and the address members reach it at.
    pub gossip_bind: SocketAddr,
    pub gossip_addr: SocketAddr,
    /// How long a failed member stays in the catalog (critical) before it is reaped.
    pub reconnect_timeout: Duration,
    /// Autopilot's `cleanup_dead_servers` (default on).
    pub cleanup_dead_servers: bool,
    pub http_addr: SocketAddr,
    /// The key this agent's Raft port requires now.
    pub cluster_key: KeyChoice,
    /// The key it presents once it joins a cluster of several (differs when alone).
    pub join_key: KeyChoice,
    pub raft_snapshot_threshold: u64,
    pub enable_script_checks: bool,
    pub plugins: Option<(PathBuf, usize)>,
    pub proxy: Option<proxy::ProxyConfig>,
    /// `None` with --no-dns.
    pub dns: Option<DnsConfig>,
    /// `None` when Docker is not watched.
    pub docker: Option<DockerMode>,
    pub config: local_agent::config_dir::Sources,
    /// Leave gracefully on SIGTERM (Consul's `leave_on_terminate`; default: clients only).
    pub leave_on_terminate: bool,
    /// Leave gracefully on SIGINT (not `skip_leave_on_interrupt`; default: clients only).
    pub leave_on_interrupt: bool,
    /// `-ui` was asked for.
    pub ui: bool,
    pub templates: crate::template_cmd::AgentTemplateArgs,
}

impl AgentConfig {
    /// Validates flags over config files over defaults. Pure: reads nothing but its
    /// arguments.
    pub fn from_args(args: &AgentArgs, file: &FileConfig, host: &Host) -> Result<AgentConfig> {
        let role = role(args, file)?;
        let key = cluster_key(args, file, role.alone)?;
        let join_key = if role.alone { cluster_key(args, file, false)? } else { key.clone() };
        let data_dir = data_dir(args, file, host);
        let node_id = match args.node_id.as_ref().or(file.node_id.as_ref()) {
            Some(id) => Some(
                id.parse::<uuid::Uuid>()
                    .map_err(|_| anyhow!("node ID {id:?} is not a UUID: pass one with -node-id (`uuidgen`)"))?,
            ),
            None => None,
        };
        let bind = args.bind.or(file.bind_addr).unwrap_or(if role.alone { LOOPBACK } else { ALL_INTERFACES });
        let advertise = match args.advertise.or(file.advertise_addr) {
            Some(ip) => ip,
            None if bind.is_unspecified() => private_ipv4(&host.interface_addrs)?.unwrap_or(LOOPBACK),
            None => bind,
        };
        let raft_port = args.raft_port.or(file.server_port).unwrap_or(8300);
        let gossip_port = args.serf_lan_port.or(file.serf_lan_port).unwrap_or(8301);
        let client = args.client.or(file.client_addr).unwrap_or(LOOPBACK);
        let node_name = args.node.clone().or_else(|| file.node_name.clone()).unwrap_or(host.hostname.clone());
        let datacenter = args.datacenter.clone().or_else(|| file.datacenter.clone()).unwrap_or_else(|| "dc1".into());
        let docker = args.docker.enabled().then(|| DockerMode {
            internal: args.docker_internal,
            network: args.docker_network.clone(),
            explicit: args.docker_explicit,
            node: node_name.clone(),
            advertise: advertise.to_string(),
            datacenter: datacenter.clone(),
        });
        Ok(AgentConfig {
            data_dir,
            node_id,
            advertise,
            raft_bind: SocketAddr::new(bind, raft_port),
            raft_addr: SocketAddr::new(advertise, raft_port),
            gossip_bind: SocketAddr::new(bind, gossip_port),
            gossip_addr: SocketAddr::new(advertise, gossip_port),
            reconnect_timeout: file.reconnect_timeout.unwrap_or(Duration::from_secs(72 * 3600)),
            cleanup_dead_servers: file.cleanup_dead_servers.unwrap_or(true),
            http_addr: SocketAddr::new(client, args.http_port.or(file.http_port).unwrap_or(8500)),
            cluster_key: key,
            join_key,
            raft_snapshot_threshold: args.raft_snapshot_threshold,
            enable_script_checks: args.enable_script_checks.or(file.enable_script_checks).unwrap_or(false),
            plugins: args.plugin_dir.clone().map(|d| (d, args.plugin_memory)),
            proxy: proxy_settings(args)?,
            dns: dns_config(args, file, &datacenter, client)?,
            docker,
            config: local_agent::config_dir::Sources { files: args.config_file.clone(), dirs: args.config_dir.clone() },
            leave_on_terminate: file.leave_on_terminate.unwrap_or(!role.voter),
            leave_on_interrupt: !file.skip_leave_on_interrupt.unwrap_or(role.voter),
            ui: args.ui || file.ui.unwrap_or(false),
            templates: args.templates.clone(),
            node_name,
            datacenter,
            role,
        })
    }

    /// The side effects: creates the data dir, reads or makes the node ID and cluster key
    /// kept there, starts the plugin host, checks the agent's templates.
    pub fn prepare(self) -> Result<Prepared> {
        std::fs::create_dir_all(&self.data_dir).with_context(|| {
            format!("cannot create data dir {}: choose another with --data-dir", self.data_dir.display())
        })?;
        let node_uuid = match self.node_id {
            Some(id) => id,
            None => {
                let path = self.data_dir.join("node-id");
                let kept = persistent_value(&path, || uuid::Uuid::new_v4().to_string())?;
                kept.parse().with_context(|| {
                    format!("node ID {kept:?} is not a UUID: pass one with -node-id, or delete {}", path.display())
                })?
            }
        };
        let cluster_key = self.key(&self.cluster_key)?;
        let join_key = self.key(&self.join_key)?;
        if cluster_key.is_empty() {
            tracing::warn!(
                "NO CLUSTER KEY: node-to-node traffic (the Raft port and gossip) is neither authenticated nor \
                 encrypted, so anyone who reaches it can join, fake a member's health or rewrite the catalog. Give every agent the same -encrypt key \
                 (`wharf keygen`)."
            );
        }
        if self.ui {
            tracing::warn!("-ui: the web UI is not part of this build yet; the HTTP API is served without it");
        }
        let plugin_host = match &self.plugins {
            Some((dir, memory)) => Some(crate::wasm::plugin_host(dir, *memory)?),
            None => None,
        };
        crate::template_cmd::check_agent_templates(&self.templates)?;
        let info = self.info(node_uuid);
        let raft = RaftSettings {
            node_id: raft_id_from_uuid(&node_uuid),
            raft_addr: self.raft_addr.to_string(),
            data_dir: self.data_dir.clone(),
            cluster_key,
            bootstrap_expect: self.role.bootstrap_expect,
            retry_join: self.role.joins.iter().map(|a| with_default_port(a, 8300)).collect(),
            voter: self.role.voter,
            snapshot_threshold: self.raft_snapshot_threshold,
            gossip_addr: Some(self.gossip_addr.to_string()),
        };
        let check_policy = CheckPolicy {
            enable_script_checks: self.enable_script_checks,
            wasm: plugin_host.clone().map(|h| Arc::new(crate::wasm::WasmChecks(h)) as Arc<dyn WasmRunner>),
        };
        let gossip = gossip::Settings {
            bind: self.gossip_bind,
            me: gossip::MemberId {
                addr: self.gossip_addr,
                incarnation: incarnation_now(),
                name: self.node_name.clone(),
                tags: gossip::Tags {
                    server: self.role.voter,
                    datacenter: self.datacenter.clone(),
                    id: node_uuid.to_string(),
                    raft_addr: self.raft_addr.to_string(),
                    build: env!("CARGO_PKG_VERSION").to_string(),
                },
            },
            key: gossip::Key::from_cluster_key(&join_key),
            timing: gossip::Timing::default(),
        };
        Ok(Prepared { info, raft, join_key, check_policy, plugin_host, gossip, config: self })
    }

    fn key(&self, choice: &KeyChoice) -> Result<String> {
        match choice {
            KeyChoice::Given(k) => Ok(k.clone()),
            KeyChoice::Unauthenticated => Ok(String::new()),
            KeyChoice::KeptInDataDir => persistent_value(&self.data_dir.join("cluster-key"), || {
                (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
            }),
        }
    }

    fn info(&self, node_uuid: uuid::Uuid) -> AgentInfo {
        AgentInfo {
            node_name: self.node_name.clone(),
            node_id: node_uuid.to_string(),
            datacenter: self.datacenter.clone(),
            advertise: self.advertise.to_string(),
            raft_addr: self.raft_addr.to_string(),
            http_addr: self.http_addr.to_string(),
            server: self.role.voter,
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir: self.data_dir.display().to_string(),
        }
    }
}

/// The config after its side effects: what the agent's services are built from.
pub(super) struct Prepared {
    pub config: AgentConfig,
    pub info: AgentInfo,
    pub raft: RaftSettings,
    /// The cluster key presented to another cluster when joining it at run time.
    pub join_key: String,
    pub check_policy: CheckPolicy,
    /// The Wasm plugin host, when `--plugin-dir` is given.
    pub plugin_host: Option<Arc<plugins::PluginHost>>,
    pub gossip: gossip::Settings,
}

/// A gossip incarnation that grows across restarts: milliseconds since the epoch.
fn incarnation_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(1)
}

/// The data dir: `--data-dir`, else the config files' `data_dir`, else the host's default.
pub(super) fn data_dir(args: &AgentArgs, file: &FileConfig, host: &Host) -> PathBuf {
    args.data_dir.clone().or_else(|| file.data_dir.clone()).unwrap_or_else(|| host.default_data_dir.clone())
}

/// Reads a value kept in the data dir, creating it with `make` the first time.
fn persistent_value(path: &Path, make: impl FnOnce() -> String) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Ok(_) => write_new(path, make()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_new(path, make()),
        Err(e) => Err(anyhow!(
            "cannot read {}: {e}; fix its permissions (it keeps this agent's identity), or remove it to start afresh",
            path.display()
        )),
    }
}

fn write_new(path: &Path, value: String) -> Result<String> {
    write_secret(path, value.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(value)
}

/// Writes a file readable by its owner only (0600), atomically: a temp file beside it,
/// fsync, rename over, fsync of the directory. A crash leaves the old file or the new one.
pub(crate) fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub(crate) fn with_default_port(addr: &str, port: u16) -> String {
    if addr.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        addr.to_string()
    } else {
        format!("{addr}:{port}")
    }
}

pub(super) fn role(args: &AgentArgs, file: &FileConfig) -> Result<Role> {
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
pub(super) fn private_ipv4(addrs: &[IpAddr]) -> Result<Option<IpAddr>> {
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
/// for an agent that runs alone, else none.
fn cluster_key(args: &AgentArgs, file: &FileConfig, alone: bool) -> Result<KeyChoice> {
    if let Some(k) = &args.cluster_key {
        if k.len() < 16 {
            bail!("--cluster-key must be at least 16 characters");
        }
        return Ok(KeyChoice::Given(k.clone()));
    }
    if let Some(k) = encrypt_key(args, file)? {
        return Ok(KeyChoice::Given(k));
    }
    Ok(if alone { KeyChoice::KeptInDataDir } else { KeyChoice::Unauthenticated })
}

fn proxy_settings(args: &AgentArgs) -> Result<Option<proxy::ProxyConfig>> {
    if !args.proxy_cert.is_empty() && args.proxy_tls_addr.is_none() {
        bail!("--proxy-cert needs --proxy-tls-addr (the TLS listener)");
    }
    if args.no_proxy {
        return Ok(None);
    }
    Ok(Some(proxy::ProxyConfig {
        listen: args.proxy_addr.clone(),
        threads: args.proxy_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
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
    }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::net::IpAddr;

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

    fn host() -> Host {
        Host {
            hostname: "h1".into(),
            interface_addrs: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([172, 18, 0, 3])],
            default_data_dir: PathBuf::from("/var/lib/wharf-test"),
        }
    }

    fn config(line: &str) -> Result<AgentConfig> {
        AgentConfig::from_args(&args(line), &FileConfig::default(), &host())
    }

    #[test]
    fn address_defaults_follow_the_role() {
        // Alone (plain `wharf agent`): everything on loopback, Consul's ports.
        let c = config("").expect("valid");
        assert_eq!(c.raft_bind.to_string(), "127.0.0.1:8300");
        assert_eq!(c.advertise, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8500");
        assert_eq!(c.cluster_key, KeyChoice::KeptInDataDir);
        assert_eq!(c.join_key, KeyChoice::Unauthenticated);
        assert_eq!((c.node_name.as_str(), c.datacenter.as_str()), ("h1", "dc1"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/wharf-test"));
        assert!(!c.leave_on_terminate && !c.leave_on_interrupt, "a server does not leave on a signal");
        // A joining client binds all interfaces and advertises the host's private address.
        let c = config("-retry-join=consul1 -client=0.0.0.0").expect("valid");
        assert_eq!(c.raft_bind.to_string(), "0.0.0.0:8300");
        assert_eq!(c.raft_addr.to_string(), "172.18.0.3:8300");
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:8500");
        assert!(c.leave_on_terminate && c.leave_on_interrupt, "a client leaves on a signal");
        // -bind alone is also what is advertised; -advertise wins over both.
        let c = config("-server -bootstrap -bind=10.1.2.3").expect("valid");
        assert_eq!(c.raft_addr.to_string(), "10.1.2.3:8300");
        let c = config("-server -bootstrap -bind=10.1.2.3 -advertise=192.168.9.9").expect("valid");
        assert_eq!(
            (c.raft_bind.to_string(), c.raft_addr.to_string()),
            ("10.1.2.3:8300".into(), "192.168.9.9:8300".into())
        );
    }

    #[test]
    fn keys_and_identity_are_checked_before_anything_is_written() {
        let c = config("-server -bootstrap -encrypt=pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=").expect("valid");
        assert_eq!(c.cluster_key, KeyChoice::Given("pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=".into()));
        let e = config("-encrypt=c2hvcnQ=").expect_err("5 bytes");
        assert!(e.to_string().contains("the key is 5 bytes"), "{e}");
        let e = config("--cluster-key=short").expect_err("too short");
        assert!(e.to_string().contains("at least 16 characters"), "{e}");
        let e = config("-node-id=node-one").expect_err("not a UUID");
        assert!(e.to_string().contains("\"node-one\" is not a UUID"), "{e}");
        let c = config("-server -bootstrap -data-dir=/nonexistent/wharf-never-created").expect("valid");
        assert!(!c.data_dir.exists(), "from_args touches no disk");
    }

    #[test]
    fn conflicting_proxy_and_dns_settings_are_refused() {
        let e = config("--proxy-cert=/a.pem:/a.key").expect_err("cert without listener");
        assert!(e.to_string().contains("--proxy-cert needs --proxy-tls-addr"), "{e}");
        assert!(config("--no-proxy --no-dns").expect("valid").proxy.is_none());
        assert!(config("--no-dns").expect("valid").dns.is_none());
        let c = config("-client=0.0.0.0 --dns-port=8600").expect("valid");
        assert!(c.dns.is_some());
    }

    #[test]
    fn kept_values_are_written_0600_atomically_and_an_unreadable_one_is_not_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster-key");
        assert_eq!(persistent_value(&path, || "k1".into()).expect("made"), "k1");
        assert_eq!(persistent_value(&path, || "k2".into()).expect("kept"), "k1");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!path.with_extension("tmp").exists(), "no temp file left behind");
        // A directory where the file should be cannot be read: an error, not a new identity.
        let odd = dir.path().join("node-id");
        std::fs::create_dir(&odd).expect("mkdir");
        let e = persistent_value(&odd, || "new".into()).expect_err("unreadable");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
