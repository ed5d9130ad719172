//! `wharf agent`'s command line. Consul's single-dash spellings are accepted by
//! `crate::normalize_args` before clap sees them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

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
    /// Gossip port, UDP (membership and failure detection; Consul's Serf LAN port)
    /// (default 8301; also WHARF_SERF_LAN_PORT).
    #[arg(long, value_name = "PORT", env = "WHARF_SERF_LAN_PORT")]
    pub serf_lan_port: Option<u16>,
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
    local_agent::config_file::parse_bool(s)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    catalog::duration::parse_go_duration(s, false)
}

fn parse_policy(s: &str) -> Result<proxy::Policy, String> {
    proxy::Policy::parse(s)
}
