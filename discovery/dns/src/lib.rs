//! wharf's DNS interface: Consul's names (`web.service.consul`, `_web._tcp.service.consul`,
//! `node1.node.consul`, ...) answered from the local catalog replica by hickory-server, on
//! UDP and TCP.
//!
//! Layers, from pure to wired:
//! - `records`: which Consul name a query asks for ([`records::DnsQuery`]) and the records
//!   that answer it from one [`CatalogState`]. No sockets, no clock, no randomness.
//! - `handler`: the hickory [`RequestHandler`](hickory_server::server::RequestHandler):
//!   header flags, EDNS, shuffling, the A-record limit, UDP truncation, recursion.
//! - this module: validated settings ([`DnsConfig`]), binding the sockets ([`DnsServer`]),
//!   and running the server on a runtime of its own, so a query flood cannot starve the HTTP
//!   API, Raft or the proxy.
//!
//! Answers always come from [`Catalog::snapshot`] (stale reads, like Consul's default): DNS
//! never waits on the leader.

mod handler;
pub mod records;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::rr::Name;
use hickory_server::Server;
use tokio::sync::{oneshot, watch};

use catalog::Catalog;
use catalog::duration::parse_go_duration;

pub use handler::{ConsulDns, answer_bytes};
pub use records::{NameIndex, ServiceTtl};

/// How long a client may keep a TCP connection open without sending a query.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one recursor may take to answer before the next one is tried.
const RECURSOR_TIMEOUT: Duration = Duration::from_secs(2);

/// The DNS settings as given on the command line (raw stage); [`DnsConfig::new`] validates
/// them.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// Address the UDP and TCP listeners bind to.
    pub addr: IpAddr,
    /// Port of both listeners.
    pub port: u16,
    /// The domain answered, e.g. `consul`.
    pub domain: String,
    /// A second domain answered the same way (Consul's `alt_domain`).
    pub alt_domain: Option<String>,
    /// This agent's datacenter (`NAME.service.DC.consul`).
    pub datacenter: String,
    /// Leave out instances in the warning state too (critical ones are always left out).
    pub only_passing: bool,
    /// Most A/AAAA records in one answer; 0 = no limit.
    pub a_record_limit: usize,
    /// TTL of node records, a Go duration (`30s`); whole seconds are used.
    pub node_ttl: String,
    /// `NAME=DURATION` service TTLs; `NAME` may end in `*` (prefix), `*` alone = default.
    pub service_ttl: Vec<String>,
    /// Upstream servers (`IP` or `IP:PORT`, port 53 by default) for names outside the domain.
    pub recursors: Vec<String>,
    /// Worker threads of the DNS runtime (at least 1).
    pub threads: usize,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8600,
            domain: "consul".into(),
            alt_domain: None,
            datacenter: "dc1".into(),
            only_passing: false,
            a_record_limit: 0,
            node_ttl: "0s".into(),
            service_ttl: Vec::new(),
            recursors: Vec::new(),
            threads: 1,
        }
    }
}

/// Validated DNS settings.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Where the UDP and TCP listeners bind.
    pub addr: SocketAddr,
    /// The answered domains, lower-case and fully qualified: the domain, then the alt domain.
    pub domains: Vec<Name>,
    /// This agent's datacenter, lower-case.
    pub datacenter: String,
    pub only_passing: bool,
    /// Most A/AAAA records in one answer; 0 = no limit.
    pub a_record_limit: usize,
    /// TTL of node records, in seconds.
    pub node_ttl: u32,
    /// TTLs of service records, in seconds.
    pub service_ttl: ServiceTtl,
    pub recursors: Vec<SocketAddr>,
    /// Time one recursor gets before the next is tried.
    pub recursor_timeout: Duration,
    pub threads: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        // The defaults are valid by construction (a unit test checks it).
        DnsConfig::new(&DnsOptions::default()).expect("default DNS options are valid")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A DNS flag has a value that cannot be used; the message names the flag.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error(
        "cannot listen on {addr} ({proto}) for DNS: {source}; is another DNS server running there? choose another --dns-port or --dns-addr"
    )]
    Bind { addr: SocketAddr, proto: &'static str, source: std::io::Error },
    /// The DNS runtime or its thread could not be started, or the server stopped on an error.
    #[error("DNS server: {0}")]
    Runtime(String),
}

/// Parses a domain flag into a lower-case FQDN.
fn parse_domain(flag: &str, value: &str) -> Result<Name, DnsError> {
    let trimmed = value.trim().trim_end_matches('.');
    let bad = |why: String| {
        DnsError::Config(format!("{flag} {value:?}: {why}; give a DNS name such as \"consul\" or \"wharf.internal\""))
    };
    if trimmed.is_empty() {
        return Err(bad("the root domain cannot be served".into()));
    }
    let mut name = Name::from_ascii(trimmed).map_err(|e| bad(e.to_string()))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

/// Parses a Go duration flag into whole seconds of TTL.
fn parse_ttl(flag: &str, value: &str) -> Result<u32, DnsError> {
    let d = parse_go_duration(value, false)
        .map_err(|e| DnsError::Config(format!("{flag}: {e}; give a duration such as 30s or 5m")))?;
    u32::try_from(d.as_secs())
        .map_err(|_| DnsError::Config(format!("{flag} {value:?}: a DNS TTL is at most 4294967295s (about 136 years)")))
}

/// Parses `IP` or `IP:PORT` (`[v6]:PORT`); port 53 by default.
fn parse_recursor(value: &str) -> Result<SocketAddr, DnsError> {
    let v = value.trim();
    if let Ok(sa) = v.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let ip = v.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)).map_err(|_| {
        DnsError::Config(format!(
            "--recursor {value:?}: expected an IP address with an optional port (8.8.8.8, 10.0.0.2:5353, [::1]:53)"
        ))
    })
}

impl DnsConfig {
    /// Validates the raw options; every error names the flag and what would be accepted.
    pub fn new(o: &DnsOptions) -> Result<DnsConfig, DnsError> {
        let domain = parse_domain("--domain", &o.domain)?;
        let mut domains = vec![domain];
        if let Some(alt) = &o.alt_domain {
            let alt = parse_domain("--alt-domain", alt)?;
            if alt == domains[0] {
                return Err(DnsError::Config(format!(
                    "--alt-domain {alt} is the same as --domain; drop it or choose another domain"
                )));
            }
            domains.push(alt);
        }
        let datacenter = o.datacenter.to_ascii_lowercase();
        if datacenter.is_empty()
            || datacenter.len() > 63
            || !datacenter.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(DnsError::Config(format!(
                "--datacenter {:?} cannot be used in DNS names: use letters, digits, '-' and '_' (at most 63)",
                o.datacenter
            )));
        }
        let node_ttl = parse_ttl("--dns-node-ttl", &o.node_ttl)?;
        let mut service_ttl = ServiceTtl::default();
        for entry in &o.service_ttl {
            let Some((name, dur)) = entry.split_once('=') else {
                return Err(DnsError::Config(format!(
                    "--dns-service-ttl {entry:?}: expected NAME=DURATION (web=30s, api-*=10s, *=5s)"
                )));
            };
            let name = name.trim();
            if name.is_empty() {
                return Err(DnsError::Config(format!(
                    "--dns-service-ttl {entry:?}: the service name is empty; use * for every service"
                )));
            }
            if name.strip_suffix('*').unwrap_or(name).contains('*') {
                return Err(DnsError::Config(format!(
                    "--dns-service-ttl {entry:?}: '*' is only allowed at the end of the name (a prefix wildcard)"
                )));
            }
            service_ttl.insert(name, parse_ttl("--dns-service-ttl", dur)?);
        }
        let recursors = o.recursors.iter().map(|r| parse_recursor(r)).collect::<Result<Vec<_>, _>>()?;
        if o.threads == 0 {
            return Err(DnsError::Config("--dns-threads must be at least 1".into()));
        }
        Ok(DnsConfig {
            addr: SocketAddr::new(o.addr, o.port),
            domains,
            datacenter,
            only_passing: o.only_passing,
            a_record_limit: o.a_record_limit,
            node_ttl,
            service_ttl,
            recursors,
            recursor_timeout: RECURSOR_TIMEOUT,
            threads: o.threads,
        })
    }
}

/// The DNS listeners, bound but not yet serving. Binding first lets the agent fail its start
/// loudly when the port is taken, before anything else runs.
pub struct DnsServer {
    config: DnsConfig,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
}

impl DnsServer {
    /// Binds the UDP socket and the TCP listener on `config.addr`.
    pub fn bind(config: DnsConfig) -> Result<DnsServer, DnsError> {
        let addr = config.addr;
        let udp = std::net::UdpSocket::bind(addr).map_err(|source| DnsError::Bind { addr, proto: "udp", source })?;
        let tcp = std::net::TcpListener::bind(addr).map_err(|source| DnsError::Bind { addr, proto: "tcp", source })?;
        for r in [udp.set_nonblocking(true), tcp.set_nonblocking(true)] {
            r.map_err(|source| DnsError::Bind { addr, proto: "udp/tcp", source })?;
        }
        Ok(DnsServer { config, udp, tcp })
    }

    /// The bound UDP address (the TCP listener is on the same address unless port 0 was
    /// asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.udp.local_addr().ok()
    }

    /// Serves until `shutdown` turns true (or its sender is dropped), on a runtime of its own
    /// with `config.threads` workers.
    pub async fn run(self, catalog: Catalog, mut shutdown: watch::Receiver<bool>) -> Result<(), DnsError> {
        let DnsServer { config, udp, tcp } = self;
        let threads = config.threads;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<Result<(), DnsError>>();
        let runtime = if threads <= 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("wharf-dns")
                .enable_all()
                .build()
        }
        .map_err(|e| DnsError::Runtime(format!("cannot start the DNS runtime: {e}")))?;
        std::thread::Builder::new()
            .name("wharf-dns".into())
            .spawn(move || {
                let result = runtime.block_on(async move {
                    let udp = tokio::net::UdpSocket::from_std(udp)
                        .map_err(|e| DnsError::Runtime(format!("cannot register the UDP socket: {e}")))?;
                    let tcp = tokio::net::TcpListener::from_std(tcp)
                        .map_err(|e| DnsError::Runtime(format!("cannot register the TCP listener: {e}")))?;
                    let mut server = Server::new(ConsulDns::new(config, catalog));
                    server.register_socket(udp);
                    server.register_listener(tcp, TCP_IDLE_TIMEOUT, 32);
                    let token = server.shutdown_token().clone();
                    tokio::spawn(async move {
                        let _ = stop_rx.await;
                        token.cancel();
                    });
                    server.block_until_done().await.map_err(|e| DnsError::Runtime(e.to_string()))
                });
                let _ = done_tx.send(result);
            })
            .map_err(|e| DnsError::Runtime(format!("cannot start the DNS thread: {e}")))?;
        let mut done_rx = done_rx;
        tokio::select! {
            res = &mut done_rx => return res.unwrap_or_else(|_| Err(DnsError::Runtime("the DNS thread panicked".into()))),
            _ = async { while !*shutdown.borrow_and_update() { if shutdown.changed().await.is_err() { break; } } } => {}
        }
        let _ = stop_tx.send(());
        match tokio::time::timeout(Duration::from_secs(5), done_rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(DnsError::Runtime("the DNS thread panicked".into())),
            Err(_) => Err(DnsError::Runtime("the DNS server did not stop within 5s".into())),
        }
    }
}

/// Binds and serves: [`DnsServer::bind`] then [`DnsServer::run`].
pub async fn serve(config: DnsConfig, catalog: Catalog, shutdown: watch::Receiver<bool>) -> Result<(), DnsError> {
    DnsServer::bind(config)?.run(catalog, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> DnsOptions {
        DnsOptions::default()
    }

    #[test]
    fn defaults_validate() {
        let c = DnsConfig::default();
        assert_eq!(c.addr, "127.0.0.1:8600".parse().expect("addr"));
        assert_eq!(c.domains, vec![Name::from_ascii("consul.").expect("name")]);
        assert_eq!(c.node_ttl, 0);
        assert_eq!(c.service_ttl.ttl("web"), 0);
    }

    #[test]
    fn domains_are_lowercase_fqdns() {
        let c = DnsConfig::new(&DnsOptions {
            domain: "Wharf.Internal.".into(),
            alt_domain: Some("CONSUL".into()),
            ..opts()
        })
        .expect("valid");
        let shown: Vec<String> = c.domains.iter().map(|d| d.to_ascii()).collect();
        assert_eq!(shown, ["wharf.internal.", "consul."]);
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let cases: Vec<(DnsOptions, &str)> = vec![
            (DnsOptions { domain: ".".into(), ..opts() }, "--domain"),
            (DnsOptions { alt_domain: Some("consul".into()), ..opts() }, "--alt-domain"),
            (DnsOptions { node_ttl: "ten".into(), ..opts() }, "--dns-node-ttl"),
            (DnsOptions { service_ttl: vec!["web".into()], ..opts() }, "--dns-service-ttl"),
            (DnsOptions { service_ttl: vec!["w*b=1s".into()], ..opts() }, "--dns-service-ttl"),
            (DnsOptions { service_ttl: vec!["web=-1s".into()], ..opts() }, "--dns-service-ttl"),
            (DnsOptions { recursors: vec!["dns.google".into()], ..opts() }, "--recursor"),
            (DnsOptions { datacenter: "dc 1".into(), ..opts() }, "--datacenter"),
            (DnsOptions { threads: 0, ..opts() }, "--dns-threads"),
            (DnsOptions { node_ttl: "2000000h".into(), ..opts() }, "--dns-node-ttl"),
        ];
        for (o, flag) in cases {
            let err = DnsConfig::new(&o).expect_err(flag).to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn recursors_default_to_port_53() {
        let c = DnsConfig::new(&DnsOptions {
            recursors: vec!["10.0.0.2".into(), "10.0.0.3:5353".into(), "[::1]:54".into(), "::1".into()],
            ..opts()
        })
        .expect("valid");
        let shown: Vec<String> = c.recursors.iter().map(|r| r.to_string()).collect();
        assert_eq!(shown, ["10.0.0.2:53", "10.0.0.3:5353", "[::1]:54", "[::1]:53"]);
    }

    #[test]
    fn ttls_are_whole_seconds() {
        let c = DnsConfig::new(&DnsOptions {
            node_ttl: "1m30s".into(),
            service_ttl: vec!["web=10s".into(), "api-*=20s".into(), "*=5s".into(), "api-v2*=1500ms".into()],
            ..opts()
        })
        .expect("valid");
        assert_eq!(c.node_ttl, 90);
        assert_eq!(c.service_ttl.ttl("web"), 10);
        assert_eq!(c.service_ttl.ttl("api-x"), 20);
        assert_eq!(c.service_ttl.ttl("api-v2-beta"), 1, "the longest prefix wins");
        assert_eq!(c.service_ttl.ttl("db"), 5, "* is the default");
    }

    #[tokio::test]
    async fn a_busy_port_fails_binding() {
        let first = DnsServer::bind(DnsConfig { addr: "127.0.0.1:0".parse().expect("addr"), ..DnsConfig::default() })
            .expect("bind");
        let taken = first.local_addr().expect("addr");
        let err = DnsServer::bind(DnsConfig { addr: taken, ..DnsConfig::default() }).err().expect("must fail");
        assert!(err.to_string().contains("--dns-port"), "{err}");
    }
}
