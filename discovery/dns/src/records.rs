//! Consul's DNS names, pure: [`parse`] tells which name a query asks for ([`DnsQuery`]),
//! [`answer`] builds the answer, authority and additional records for it from one
//! [`CatalogState`]. No sockets, no clock, no randomness (the handler shuffles and trims),
//! so every name form is unit-tested here.
//!
//! Names (case-insensitive; `DC` optional and must be this agent's datacenter):
//! - `NAME.service.DC.consul`, `TAG.NAME.service.DC.consul`, `_NAME._TAG.service.DC.consul`
//!   (RFC 2782; `_tcp` means no tag filter): A/AAAA of the instances (the service address,
//!   else the node address), SRV (priority 1, weight from `Weights`, the port, a target
//!   with its address in the additional section).
//! - `NODE.node.DC.consul`: A/AAAA of the node, TXT records from its meta.
//! - `HEX.addr.DC.consul`: the IP spelled in hex (SRV targets of instances whose address
//!   is not their node's, as in Consul).
//! - anything else in the domain: NXDOMAIN with the SOA in the authority section; a known
//!   name asked with another type: NOERROR, no answer, the SOA in the authority section.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use super::DnsConfig;
use catalog::model::{CheckStatus, Node, Service};
use catalog::state::CatalogState;

/// TTLs of service records: exact names first, then the longest matching `prefix*`
/// (`*` alone is the default), else 0.
#[derive(Clone, Debug, Default)]
pub struct ServiceTtl {
    exact: HashMap<String, u32>,
    /// Longest prefix first.
    prefixes: Vec<(String, u32)>,
}

impl ServiceTtl {
    /// Adds `name` (`web`, `api-*`, `*`), case-insensitive; a later entry for the same name wins.
    pub fn insert(&mut self, name: &str, ttl: u32) {
        let name = name.to_ascii_lowercase();
        match name.strip_suffix('*') {
            Some(prefix) => {
                self.prefixes.retain(|(p, _)| p != prefix);
                self.prefixes.push((prefix.to_string(), ttl));
                self.prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            }
            None => {
                self.exact.insert(name, ttl);
            }
        }
    }

    /// The TTL, in seconds, of the lower-case service `name`.
    pub fn ttl(&self, name: &str) -> u32 {
        if let Some(t) = self.exact.get(name) {
            return *t;
        }
        self.prefixes.iter().find(|(p, _)| name.starts_with(p.as_str())).map(|(_, t)| *t).unwrap_or(0)
    }
}

/// One service instance as DNS sees it: its node, itself and its aggregate health (the
/// worst of its own and its node's checks).
#[derive(Clone, Debug)]
pub struct Instance {
    pub node: Node,
    pub service: Service,
    pub status: CheckStatus,
}

/// A service's catalog spellings and, computed on first use, its instances.
#[derive(Debug, Default)]
struct ServiceEntry {
    spellings: Vec<String>,
    instances: OnceLock<Vec<Instance>>,
}

/// Service and node names of one catalog state by their lower-case form (DNS is
/// case-insensitive, the catalog is not), and each service's instances with their health,
/// computed once per state on the first query for that service: the catalog's health query
/// walks every check of every instance's node, too slow to repeat per DNS query.
#[derive(Debug, Default)]
pub struct NameIndex {
    services: HashMap<String, ServiceEntry>,
    nodes: HashMap<String, String>,
}

impl NameIndex {
    pub fn build(state: &CatalogState) -> NameIndex {
        let mut services: HashMap<String, ServiceEntry> = HashMap::new();
        for name in state.service_names().0.into_keys() {
            services.entry(name.to_ascii_lowercase()).or_default().spellings.push(name);
        }
        let mut nodes = HashMap::new();
        for node in state.nodes().0 {
            nodes.entry(node.node.to_ascii_lowercase()).or_insert(node.node);
        }
        NameIndex { services, nodes }
    }

    /// The instances of the lower-case service `name` in `state`, which must be the state
    /// this index was built from.
    pub fn instances(&self, state: &CatalogState, name: &str) -> &[Instance] {
        let Some(entry) = self.services.get(name) else {
            return &[];
        };
        entry.instances.get_or_init(|| {
            entry
                .spellings
                .iter()
                .flat_map(|spelling| state.service_health(spelling, &[], false).0)
                .map(|h| Instance { status: h.aggregate(), node: h.node, service: h.service })
                .collect()
        })
    }

    /// The catalog's spelling of the lower-case node `name`.
    pub fn node(&self, name: &str) -> Option<&str> {
        self.nodes.get(name).map(String::as_str)
    }
}

/// A name inside the served domain, as Consul reads it. Strings are lower-case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsQuery {
    /// The domain itself (`consul.`).
    Apex,
    /// A name that holds no records but has names below it (`service.consul.`,
    /// `dc1.consul.`, `_tcp.service.consul.`). It exists: an NXDOMAIN here would tell a
    /// resolver that does QNAME minimisation that nothing below exists (RFC 8020).
    Interior,
    /// `NAME.service`, `TAG.NAME.service`, `_NAME._TAG.service`.
    Service { name: String, tag: Option<String> },
    /// `NODE.node`.
    Node { name: String },
    /// `HEX.addr`.
    Addr { ip: IpAddr },
}

/// Where a query name falls.
#[derive(Debug, PartialEq)]
pub enum Lookup<'c> {
    /// Outside every served domain: recursion, or REFUSED.
    Outside,
    /// Inside `domain` (the served domain it matched, lower-case); `query` is `None` when no
    /// such name can exist (NXDOMAIN).
    Inside { domain: &'c Name, query: Option<DnsQuery> },
}

/// Reads a (lower-case) query name.
pub fn parse<'c>(name: &LowerName, config: &'c DnsConfig) -> Lookup<'c> {
    let name: &Name = name;
    let Some(domain) = config.domains.iter().filter(|d| d.zone_of(name)).max_by_key(|d| d.iter().len()) else {
        return Lookup::Outside;
    };
    let own = name.iter().len().saturating_sub(domain.iter().len());
    let labels: Option<Vec<&str>> = name.iter().take(own).map(|l| std::str::from_utf8(l).ok()).collect();
    let query = labels.and_then(|labels| parse_labels(&labels, &config.datacenter));
    Lookup::Inside { domain, query }
}

const KINDS: [&str; 3] = ["service", "node", "addr"];

/// Reads the labels left of the domain, from the right like Consul: `KIND` or `KIND.DC`.
fn parse_labels(labels: &[&str], datacenter: &str) -> Option<DnsQuery> {
    let n = labels.len();
    if n == 0 {
        return Some(DnsQuery::Apex);
    }
    let kind_at = if KINDS.contains(&labels[n - 1]) {
        n - 1
    } else if n >= 2 && KINDS.contains(&labels[n - 2]) && labels[n - 1] == datacenter {
        n - 2
    } else if n == 1 && labels[0] == datacenter {
        return Some(DnsQuery::Interior);
    } else {
        return None;
    };
    let owned = |s: &str| s.to_string();
    match (labels[kind_at], &labels[..kind_at]) {
        (_, []) => Some(DnsQuery::Interior),
        // `_tcp.service.consul` is the parent of `_web._tcp.service.consul`.
        ("service", [one]) if one.starts_with('_') => Some(DnsQuery::Interior),
        ("service", [name]) => Some(DnsQuery::Service { name: owned(name), tag: None }),
        ("service", [name, tag]) if name.starts_with('_') && tag.starts_with('_') => {
            let (name, tag) = (&name[1..], &tag[1..]);
            if name.is_empty() {
                return None;
            }
            let tag = (!tag.is_empty() && tag != "tcp").then(|| owned(tag));
            Some(DnsQuery::Service { name: owned(name), tag })
        }
        ("service", [tag, name]) => Some(DnsQuery::Service { name: owned(name), tag: Some(owned(tag)) }),
        ("node", parts) => Some(DnsQuery::Node { name: parts.join(".") }),
        ("addr", [hex]) => parse_hex_ip(hex).map(|ip| DnsQuery::Addr { ip }),
        _ => None,
    }
}

fn parse_hex_ip(hex: &str) -> Option<IpAddr> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        8 => u32::from_str_radix(hex, 16).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        32 => u128::from_str_radix(hex, 16).ok().map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        _ => None,
    }
}

fn hex_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

/// The records of one response, before shuffling and trimming.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl Answer {
    fn records(answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
        Answer { rcode: ResponseCode::NoError, answers, authorities: Vec::new(), additionals }
    }
}

/// The SOA of `domain` (as the client spelled it). Its serial is the catalog's Raft index;
/// its minimum (the negative-caching TTL) is 0, so new services are seen at once.
pub fn soa(domain: &Name, serial: u64) -> Record {
    let label = |l: &str| Name::from_ascii(l).and_then(|n| n.append_domain(domain)).unwrap_or_else(|_| domain.clone());
    let soa = SOA::new(label("ns"), label("hostmaster"), serial as u32, 3600, 600, 86400, 0);
    Record::from_rdata(domain.clone(), 0, RData::SOA(soa))
}

/// Answers a query inside a served domain.
///
/// `qname` is the name as the client spelled it (answers echo its case), `domain` the
/// served domain it matched and `query` what [`parse`] read from it.
pub fn answer(
    state: &CatalogState,
    names: &NameIndex,
    config: &DnsConfig,
    qname: &Name,
    qtype: RecordType,
    domain: &Name,
    query: Option<&DnsQuery>,
) -> Answer {
    // The domain as spelled in the question, for the SOA and for targets.
    let zone = qname.trim_to(domain.iter().len());
    let result = match query {
        None => None,
        Some(DnsQuery::Apex) => Some(match qtype {
            RecordType::SOA | RecordType::ANY => Answer::records(vec![soa(&zone, state.last_index())], Vec::new()),
            _ => Answer::records(Vec::new(), Vec::new()),
        }),
        Some(DnsQuery::Interior) => Some(Answer::records(Vec::new(), Vec::new())),
        Some(DnsQuery::Service { name, tag }) => {
            service_answer(state, names, config, qname, qtype, &zone, name, tag.as_deref())
        }
        Some(DnsQuery::Node { name }) => node_answer(state, names, config, qname, qtype, name),
        Some(DnsQuery::Addr { ip }) => {
            let fits = matches!((ip, qtype), (IpAddr::V4(_), RecordType::A) | (IpAddr::V6(_), RecordType::AAAA))
                || qtype == RecordType::ANY;
            let answers = if fits { vec![ip_record(qname.clone(), config.node_ttl, *ip)] } else { Vec::new() };
            Some(Answer::records(answers, Vec::new()))
        }
    };
    match result {
        None => Answer {
            rcode: ResponseCode::NXDomain,
            answers: Vec::new(),
            authorities: vec![soa(&zone, state.last_index())],
            additionals: Vec::new(),
        },
        Some(mut a) if a.answers.is_empty() => {
            // NODATA: the name exists, not with this type.
            a.additionals.clear();
            a.authorities = vec![soa(&zone, state.last_index())];
            a
        }
        Some(a) => a,
    }
}

fn ip_record(owner: Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner, ttl, data)
}

/// A host name from the catalog as a fully qualified DNS name, if it is one.
fn host_name(host: &str) -> Option<Name> {
    let mut name = Name::from_ascii(host.trim_end_matches('.')).ok()?;
    if name.is_root() {
        return None;
    }
    name.set_fqdn(true);
    Some(name)
}

/// The record for `owner` at `address`: A or AAAA for an IP, a CNAME for a host name.
fn address_record(owner: Name, ttl: u32, address: &str) -> Option<Record> {
    match address.parse::<IpAddr>() {
        Ok(ip) => Some(ip_record(owner, ttl, ip)),
        Err(_) => host_name(address).map(|target| Record::from_rdata(owner, ttl, RData::CNAME(CNAME(target)))),
    }
}

fn wants(qtype: RecordType, record: &Record) -> bool {
    match qtype {
        RecordType::ANY => true,
        RecordType::A | RecordType::AAAA => record.record_type() == qtype || record.record_type() == RecordType::CNAME,
        other => record.record_type() == other,
    }
}

/// The instances of `name` that DNS shows: tag matched case-insensitively, critical ones
/// out, warning ones out with `only_passing`.
fn instances<'n>(
    state: &CatalogState,
    names: &'n NameIndex,
    config: &DnsConfig,
    name: &str,
    tag: Option<&str>,
) -> Vec<&'n Instance> {
    names
        .instances(state, name)
        .iter()
        .filter(|i| match i.status {
            CheckStatus::Passing => true,
            CheckStatus::Warning => !config.only_passing,
            CheckStatus::Critical => false,
        })
        .filter(|i| tag.is_none_or(|tag| i.service.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))))
        .collect()
}

/// The SRV target of an instance and the record that resolves it, as Consul names them:
/// `NODE.node.DC.domain.` when the instance uses its node's address, `HEX.addr.DC.domain.`
/// when it has an IP of its own, the host name itself when its address is one.
fn srv_target(node: &Node, service: &Service, suffixes: &TargetSuffixes, ttl: u32) -> Option<(Name, Option<Record>)> {
    if uses_node_address(node, service) {
        let labels = node.node.split('.').map(str::as_bytes);
        let target = Name::from_labels(labels).ok()?.append_domain(&suffixes.node).ok()?;
        let extra = address_record(target.clone(), ttl, &node.address);
        return Some((target, extra));
    }
    match service.address.parse::<IpAddr>() {
        Ok(ip) => {
            let target = Name::from_ascii(hex_ip(ip)).ok()?.append_domain(&suffixes.addr).ok()?;
            Some((target.clone(), Some(ip_record(target, ttl, ip))))
        }
        Err(_) => host_name(&service.address).map(|target| (target, None)),
    }
}

fn uses_node_address(node: &Node, service: &Service) -> bool {
    service.address.is_empty() || service.address == node.address
}

/// What an instance's SRV target is made of: its node's name, or its own address.
fn target_key(h: &Instance) -> (&str, bool) {
    if uses_node_address(&h.node, &h.service) {
        (h.node.node.as_str(), true)
    } else {
        (h.service.address.as_str(), false)
    }
}

/// `node.DC.domain.` and `addr.DC.domain.`, built once per query.
struct TargetSuffixes {
    node: Name,
    addr: Name,
}

impl TargetSuffixes {
    fn new(datacenter: &str, zone: &Name) -> Option<TargetSuffixes> {
        let dc_zone = Name::from_ascii(datacenter).ok()?.append_domain(zone).ok()?;
        let under = |label: &str| Name::from_ascii(label).ok()?.append_domain(&dc_zone).ok();
        Some(TargetSuffixes { node: under("node")?, addr: under("addr")? })
    }
}

#[allow(clippy::too_many_arguments)]
fn service_answer(
    state: &CatalogState,
    names: &NameIndex,
    config: &DnsConfig,
    qname: &Name,
    qtype: RecordType,
    zone: &Name,
    name: &str,
    tag: Option<&str>,
) -> Option<Answer> {
    let found = instances(state, names, config, name, tag);
    if found.is_empty() {
        return None;
    }
    let ttl = config.service_ttl.ttl(name);
    let mut answers: Vec<Record> = Vec::new();
    let mut additionals: Vec<Record> = Vec::new();
    match qtype {
        RecordType::SRV => {
            let suffixes = TargetSuffixes::new(&config.datacenter, zone)?;
            // What a target is made of: the node's name, or the instance's own address.
            let mut seen: Vec<((&str, bool), u16)> = Vec::with_capacity(found.len());
            let mut resolved: Vec<(&str, bool)> = Vec::with_capacity(found.len());
            for h in &found {
                let key = target_key(h);
                if seen.contains(&(key, h.service.port)) {
                    continue;
                }
                let Some((target, extra)) = srv_target(&h.node, &h.service, &suffixes, ttl) else {
                    continue;
                };
                seen.push((key, h.service.port));
                let weight = match h.status {
                    CheckStatus::Warning => h.service.weights.warning,
                    _ => h.service.weights.passing,
                };
                let weight = u16::try_from(weight).unwrap_or(u16::MAX);
                answers.push(Record::from_rdata(
                    qname.clone(),
                    ttl,
                    RData::SRV(SRV::new(1, weight, h.service.port, target.clone())),
                ));
                if let Some(extra) = extra
                    && !resolved.contains(&key)
                {
                    resolved.push(key);
                    additionals.push(extra);
                }
            }
        }
        RecordType::A | RecordType::AAAA | RecordType::ANY => {
            let mut cname: Option<Record> = None;
            for h in &found {
                let address = if h.service.address.is_empty() { &h.node.address } else { &h.service.address };
                let Some(record) = address_record(qname.clone(), ttl, address) else {
                    continue;
                };
                if record.record_type() == RecordType::CNAME {
                    cname.get_or_insert(record);
                } else if wants(qtype, &record) && !answers.iter().any(|r| r.data == record.data) {
                    answers.push(record);
                }
            }
            // A name holds either a CNAME or other records, never both.
            if answers.is_empty()
                && let Some(c) = cname
            {
                answers.push(c);
            }
        }
        _ => {}
    }
    Some(Answer::records(answers, additionals))
}

/// The TXT records of a node's meta: one per key, `key=value` (Consul's `rfc1035-` keys
/// give the bare value), split into character-strings of at most 255 bytes.
fn meta_txt(owner: &Name, ttl: u32, meta: &std::collections::BTreeMap<String, String>) -> Vec<Record> {
    meta.iter()
        .map(|(k, v)| {
            let text = if k.starts_with("rfc1035-") { v.clone() } else { format!("{k}={v}") };
            let mut chunks: Vec<&[u8]> = text.as_bytes().chunks(255).collect();
            if chunks.is_empty() {
                chunks.push(b"");
            }
            Record::from_rdata(owner.clone(), ttl, RData::TXT(TXT::from_bytes(chunks)))
        })
        .collect()
}

fn node_answer(
    state: &CatalogState,
    names: &NameIndex,
    config: &DnsConfig,
    qname: &Name,
    qtype: RecordType,
    name: &str,
) -> Option<Answer> {
    let node = state.node(names.node(name)?)?;
    let ttl = config.node_ttl;
    let address = address_record(qname.clone(), ttl, &node.address).filter(|r| wants(qtype, r));
    let txt = meta_txt(qname, ttl, &node.meta);
    Some(match qtype {
        RecordType::A | RecordType::AAAA => Answer::records(address.into_iter().collect(), txt),
        RecordType::TXT => Answer::records(txt, Vec::new()),
        RecordType::ANY => Answer::records(address.into_iter().chain(txt).collect(), Vec::new()),
        _ => Answer::records(Vec::new(), Vec::new()),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::DnsOptions;
    use catalog::command::Command;
    use catalog::model::{HealthCheck, Weights};

    fn config() -> DnsConfig {
        DnsConfig::default()
    }

    fn lower(s: &str) -> LowerName {
        LowerName::from(Name::from_ascii(s).expect("name"))
    }

    fn q(s: &str) -> Option<DnsQuery> {
        let c = config();
        match parse(&lower(s), &c) {
            Lookup::Inside { query, .. } => query,
            Lookup::Outside => panic!("{s} is outside"),
        }
    }

    fn svc(name: &str, tag: Option<&str>) -> Option<DnsQuery> {
        Some(DnsQuery::Service { name: name.into(), tag: tag.map(Into::into) })
    }

    #[test]
    fn parses_every_name_form() {
        assert_eq!(q("consul."), Some(DnsQuery::Apex));
        assert_eq!(q("web.service.consul."), svc("web", None));
        assert_eq!(q("web.service.dc1.consul."), svc("web", None));
        assert_eq!(q("v1.web.service.consul."), svc("web", Some("v1")));
        assert_eq!(q("v1.web.service.dc1.consul."), svc("web", Some("v1")));
        assert_eq!(q("_web._tcp.service.consul."), svc("web", None));
        assert_eq!(q("_web._v1.service.dc1.consul."), svc("web", Some("v1")));
        assert_eq!(q("n1.node.consul."), Some(DnsQuery::Node { name: "n1".into() }));
        assert_eq!(q("n1.node.dc1.consul."), Some(DnsQuery::Node { name: "n1".into() }));
        assert_eq!(q("7f000001.addr.dc1.consul."), Some(DnsQuery::Addr { ip: IpAddr::from([127, 0, 0, 1]) }));
        assert_eq!(
            q("00000000000000000000000000000001.addr.consul."),
            Some(DnsQuery::Addr { ip: IpAddr::V6(Ipv6Addr::LOCALHOST) })
        );
    }

    #[test]
    fn parents_of_names_exist_but_unknown_names_do_not() {
        for interior in ["service.consul.", "node.dc1.consul.", "dc1.consul.", "_tcp.service.consul."] {
            assert_eq!(q(interior), Some(DnsQuery::Interior), "{interior}");
        }
        for unknown in [
            "web.consul.",
            "web.service.dc2.consul.",
            "dc2.consul.",
            "a.b.c.service.consul.",
            "zz.addr.consul.",
            "7f00000g.addr.consul.",
            "7f0000001.addr.consul.",
            "web.query.consul.",
        ] {
            assert_eq!(q(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn domains_match_case_insensitively_and_the_longest_wins() {
        let c = DnsConfig::new(&DnsOptions {
            domain: "consul".into(),
            alt_domain: Some("dc.consul".into()),
            ..DnsOptions::default()
        })
        .expect("config");
        match parse(&lower("WEB.Service.DC.Consul."), &c) {
            Lookup::Inside { domain, query } => {
                assert_eq!(domain.to_ascii(), "dc.consul.");
                assert_eq!(query, svc("web", None));
            }
            Lookup::Outside => panic!("inside"),
        }
        assert_eq!(parse(&lower("example.com."), &c), Lookup::Outside);
        assert_eq!(parse(&lower("consul.example.com."), &c), Lookup::Outside);
    }

    // ------------------------------------------------------------ catalog fixtures --

    struct Fixture {
        state: CatalogState,
        index: u64,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture { state: CatalogState::default(), index: 0 }
        }

        fn node(&mut self, name: &str, address: &str, meta: &[(&str, &str)]) {
            let node = Node {
                node: name.into(),
                address: address.into(),
                datacenter: "dc1".into(),
                meta: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                ..Default::default()
            };
            self.apply(Command::Register {
                node,
                service: None,
                checks: vec![],
                skip_node_update: false,
                replace_service_checks: false,
            });
        }

        #[allow(clippy::too_many_arguments)]
        fn service(
            &mut self,
            node: &str,
            id: &str,
            name: &str,
            address: &str,
            port: u16,
            tags: &[&str],
            status: Option<CheckStatus>,
            weights: Weights,
        ) {
            let node = self.state.node(node).expect("node registered first").clone();
            let service = Service {
                id: id.into(),
                service: name.into(),
                address: address.into(),
                port,
                tags: tags.iter().map(|t| t.to_string()).collect(),
                weights,
                ..Default::default()
            };
            let checks = status
                .map(|s| HealthCheck {
                    node: node.node.clone(),
                    check_id: format!("check-{id}"),
                    status: s,
                    service_id: id.into(),
                    service_name: name.into(),
                    ..Default::default()
                })
                .into_iter()
                .collect();
            self.apply(Command::Register {
                node,
                service: Some(service),
                checks,
                skip_node_update: true,
                replace_service_checks: false,
            });
        }

        fn apply(&mut self, cmd: Command) {
            self.index += 1;
            let outcome = self.state.apply(self.index, &cmd);
            assert_eq!(outcome, catalog::command::Outcome::Applied);
        }

        fn ask(&self, config: &DnsConfig, name: &str, qtype: RecordType) -> Answer {
            let qname = Name::from_ascii(name).expect("name");
            let names = NameIndex::build(&self.state);
            let lowered = LowerName::from(&qname);
            match parse(&lowered, config) {
                Lookup::Inside { domain, query } => {
                    answer(&self.state, &names, config, &qname, qtype, domain, query.as_ref())
                }
                Lookup::Outside => panic!("{name} is outside"),
            }
        }
    }

    fn w(passing: u32, warning: u32) -> Weights {
        Weights { passing, warning }
    }

    fn sample() -> Fixture {
        let mut f = Fixture::new();
        f.node("Node-A", "10.0.0.1", &[("rack", "r1"), ("rfc1035-spf", "v=spf1 -all")]);
        f.node("node-b", "10.0.0.2", &[]);
        f.node("node-c", "fd00::3", &[]);
        f.service("Node-A", "web-1", "web", "", 8080, &["v1", "Primary"], Some(CheckStatus::Passing), w(10, 1));
        f.service("node-b", "web-2", "web", "10.0.1.2", 8081, &["v2"], Some(CheckStatus::Warning), w(10, 3));
        f.service("node-b", "web-3", "web", "", 8082, &["v1"], Some(CheckStatus::Critical), w(1, 1));
        f.service("node-c", "web-4", "web", "", 8083, &[], None, w(1, 1));
        f.service("node-b", "db-1", "DB", "db.example.com", 5432, &[], None, w(1, 1));
        f
    }

    fn data(a: &Answer) -> Vec<String> {
        let mut v: Vec<String> =
            a.answers.iter().map(|r| format!("{} {} {}", r.record_type(), r.ttl, r.data)).collect();
        v.sort();
        v
    }

    fn extra(a: &Answer) -> Vec<String> {
        let mut v: Vec<String> =
            a.additionals.iter().map(|r| format!("{} {} {}", r.name, r.record_type(), r.data)).collect();
        v.sort();
        v
    }

    #[test]
    fn service_a_records_use_the_service_address_else_the_node_address_and_skip_critical() {
        let f = sample();
        let a = f.ask(&config(), "web.service.consul.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(data(&a), ["A 0 10.0.0.1", "A 0 10.0.1.2"], "web-3 is critical, web-4 is IPv6");
        assert!(a.answers.iter().all(|r| r.name.to_ascii() == "web.service.consul."));
        let aaaa = f.ask(&config(), "web.service.consul.", RecordType::AAAA);
        assert_eq!(data(&aaaa), ["AAAA 0 fd00::3"]);
        let any = f.ask(&config(), "web.service.consul.", RecordType::ANY);
        assert_eq!(any.answers.len(), 3);
    }

    #[test]
    fn only_passing_leaves_warning_instances_out() {
        let f = sample();
        let c = DnsConfig { only_passing: true, ..config() };
        assert_eq!(data(&f.ask(&c, "web.service.consul.", RecordType::A)), ["A 0 10.0.0.1"]);
    }

    #[test]
    fn srv_answers_carry_weights_ports_and_targets_with_their_addresses() {
        let f = sample();
        let a = f.ask(&config(), "web.service.consul.", RecordType::SRV);
        assert_eq!(
            data(&a),
            [
                "SRV 0 1 1 8083 node-c.node.dc1.consul.",
                "SRV 0 1 10 8080 Node-A.node.dc1.consul.",
                "SRV 0 1 3 8081 0a000102.addr.dc1.consul.",
            ]
        );
        assert_eq!(
            extra(&a),
            [
                "0a000102.addr.dc1.consul. A 10.0.1.2",
                "Node-A.node.dc1.consul. A 10.0.0.1",
                "node-c.node.dc1.consul. AAAA fd00::3",
            ]
        );
    }

    #[test]
    fn tags_filter_case_insensitively_in_both_forms() {
        let f = sample();
        let by_tag = f.ask(&config(), "primary.web.service.consul.", RecordType::A);
        assert_eq!(data(&by_tag), ["A 0 10.0.0.1"]);
        let rfc = f.ask(&config(), "_web._v2.service.consul.", RecordType::SRV);
        assert_eq!(data(&rfc), ["SRV 0 1 3 8081 0a000102.addr.dc1.consul."]);
        let tcp = f.ask(&config(), "_web._tcp.service.consul.", RecordType::SRV);
        assert_eq!(tcp.answers.len(), 3, "_tcp filters nothing");
        let none = f.ask(&config(), "v9.web.service.consul.", RecordType::A);
        assert_eq!(none.rcode, ResponseCode::NXDomain);
        let only_critical = f.ask(&config(), "_web._v1.service.consul.", RecordType::SRV);
        assert_eq!(data(&only_critical), ["SRV 0 1 10 8080 Node-A.node.dc1.consul."]);
    }

    #[test]
    fn names_are_case_insensitive_and_answers_echo_the_question() {
        let f = sample();
        let a = f.ask(&config(), "WEB.Service.CONSUL.", RecordType::SRV);
        assert_eq!(a.answers.len(), 3);
        assert!(a.answers.iter().all(|r| r.name.to_ascii() == "WEB.Service.CONSUL."));
        let Some(RData::SRV(srv)) =
            a.answers.iter().map(|r| &r.data).find(|d| matches!(d, RData::SRV(s) if s.port == 8080))
        else {
            panic!("srv")
        };
        assert_eq!(srv.target.to_ascii(), "Node-A.node.dc1.CONSUL.");
        let db = f.ask(&config(), "db.service.consul.", RecordType::A);
        assert_eq!(data(&db), ["CNAME 0 db.example.com."], "a host-name address is a CNAME");
        let node = f.ask(&config(), "NODE-a.node.consul.", RecordType::A);
        assert_eq!(data(&node), ["A 0 10.0.0.1"]);
    }

    #[test]
    fn node_lookups_give_the_address_and_meta_as_txt() {
        let f = sample();
        let a = f.ask(&config(), "node-a.node.dc1.consul.", RecordType::A);
        assert_eq!(data(&a), ["A 0 10.0.0.1"]);
        assert_eq!(extra(&a), ["node-a.node.dc1.consul. TXT rack=r1", "node-a.node.dc1.consul. TXT v=spf1 -all"]);
        let txt = f.ask(&config(), "node-a.node.consul.", RecordType::TXT);
        assert_eq!(data(&txt), ["TXT 0 rack=r1", "TXT 0 v=spf1 -all"]);
        let v6 = f.ask(&config(), "node-c.node.consul.", RecordType::AAAA);
        assert_eq!(data(&v6), ["AAAA 0 fd00::3"]);
    }

    #[test]
    fn long_meta_values_are_split_into_255_byte_strings() {
        let mut f = Fixture::new();
        let long = "x".repeat(600);
        f.node("n", "10.0.0.9", &[("k", &long)]);
        let a = f.ask(&config(), "n.node.consul.", RecordType::TXT);
        let RData::TXT(txt) = &a.answers[0].data else { panic!("txt") };
        let lens: Vec<usize> = txt.txt_data.iter().map(|s| s.len()).collect();
        assert_eq!(lens, [255, 255, 92]);
    }

    #[test]
    fn unknown_names_are_nxdomain_with_the_soa() {
        let f = sample();
        for name in ["nope.service.consul.", "nope.node.consul.", "web.service.dc2.consul.", "x.y.consul."] {
            let a = f.ask(&config(), name, RecordType::A);
            assert_eq!(a.rcode, ResponseCode::NXDomain, "{name}");
            assert!(a.answers.is_empty());
            assert_eq!(a.authorities.len(), 1);
            let RData::SOA(soa) = &a.authorities[0].data else { panic!("soa") };
            assert_eq!(a.authorities[0].name.to_ascii(), "consul.");
            assert_eq!(soa.mname.to_ascii(), "ns.consul.");
            assert_eq!(soa.serial, f.index as u32);
        }
    }

    #[test]
    fn known_names_asked_with_another_type_are_nodata_with_the_soa() {
        let f = sample();
        for (name, qtype) in [
            ("web.service.consul.", RecordType::TXT),
            ("web.service.consul.", RecordType::MX),
            ("node-a.node.consul.", RecordType::AAAA),
            ("node-b.node.consul.", RecordType::SRV),
            ("service.consul.", RecordType::A),
            ("consul.", RecordType::A),
            ("7f000001.addr.consul.", RecordType::AAAA),
        ] {
            let a = f.ask(&config(), name, qtype);
            assert_eq!(a.rcode, ResponseCode::NoError, "{name} {qtype}");
            assert!(a.answers.is_empty(), "{name} {qtype}");
            assert!(a.additionals.is_empty(), "{name} {qtype}");
            assert_eq!(a.authorities.len(), 1, "{name} {qtype}");
            assert_eq!(a.authorities[0].record_type(), RecordType::SOA);
        }
        let apex = f.ask(&config(), "consul.", RecordType::SOA);
        assert_eq!(apex.answers[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn ttls_follow_the_config() {
        let f = sample();
        let c = DnsConfig::new(&DnsOptions {
            node_ttl: "30s".into(),
            service_ttl: vec!["w*=7s".into(), "*=3s".into()],
            ..DnsOptions::default()
        })
        .expect("config");
        assert!(f.ask(&c, "web.service.consul.", RecordType::SRV).answers.iter().all(|r| r.ttl == 7));
        assert!(f.ask(&c, "web.service.consul.", RecordType::SRV).additionals.iter().all(|r| r.ttl == 7));
        assert!(f.ask(&c, "db.service.consul.", RecordType::A).answers.iter().all(|r| r.ttl == 3));
        assert!(f.ask(&c, "node-a.node.consul.", RecordType::A).answers.iter().all(|r| r.ttl == 30));
    }

    #[test]
    fn instances_on_one_node_and_port_are_not_repeated() {
        let mut f = Fixture::new();
        f.node("n", "10.0.0.9", &[]);
        f.service("n", "a", "api", "", 80, &[], None, w(1, 1));
        f.service("n", "b", "api", "", 80, &[], None, w(1, 1));
        f.service("n", "c", "api", "", 81, &[], None, w(1, 1));
        let srv = f.ask(&config(), "api.service.consul.", RecordType::SRV);
        assert_eq!(srv.answers.len(), 2);
        assert_eq!(srv.additionals.len(), 1, "one A for the shared target");
        assert_eq!(f.ask(&config(), "api.service.consul.", RecordType::A).answers.len(), 1);
    }

    #[test]
    fn service_ttl_entries_later_win_and_are_case_insensitive() {
        let mut t = ServiceTtl::default();
        t.insert("Web", 5);
        t.insert("web", 6);
        t.insert("a*", 1);
        t.insert("A*", 2);
        assert_eq!(t.ttl("web"), 6);
        assert_eq!(t.ttl("abc"), 2);
        assert_eq!(t.ttl("zzz"), 0);
    }
}
