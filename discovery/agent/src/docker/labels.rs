//! Registrator's conventions, pure: from what `docker inspect` says about a container
//! (env, labels, ports, networks, health) to the service registrations wharf writes.
//!
//! `SERVICE_<KEY>` from the environment, overridden by labels (labels win), and
//! `SERVICE_<port>_<KEY>` per port over the generic ones. Known keys: NAME, ID, TAGS,
//! IGNORE, CHECK_HTTP, CHECK_HTTPS, CHECK_TCP, CHECK_TTL, CHECK_INTERVAL, CHECK_TIMEOUT,
//! CHECK_INITIAL_STATUS, CHECK_DEREGISTER_AFTER, and wharf's CHECK_WASM (a plugin of
//! `--plugin-dir`) with CHECK_WASM_CONFIG; any other key becomes service Meta (lower
//! case). wharf's own labels for new users: `wharf.service`, `wharf.port`, `wharf.tags`,
//! `wharf.route`, `wharf.lb`, `wharf.ignore`.

use std::collections::BTreeMap;

use catalog::duration::parse_go_duration;
use catalog::model::{CheckDefinition, CheckStatus, HealthCheck, Service, Weights};

/// Meta key recording which container a registration belongs to (ownership for
/// reconciliation).
pub const CONTAINER_META: &str = "wharf-docker-id";
/// The check the watcher flips to critical the moment a container is being stopped.
pub const LIFECYCLE_CHECK_PREFIX: &str = "wharf-docker:";
/// The check mirroring a Docker HEALTHCHECK.
pub const HEALTH_CHECK_PREFIX: &str = "wharf-docker-health:";

/// A container's Docker HEALTHCHECK state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DockerHealth {
    Starting,
    Healthy,
    Unhealthy,
}

impl DockerHealth {
    pub fn parse(s: &str) -> Option<DockerHealth> {
        match s.trim() {
            "starting" => Some(DockerHealth::Starting),
            "healthy" => Some(DockerHealth::Healthy),
            "unhealthy" => Some(DockerHealth::Unhealthy),
            _ => None,
        }
    }
}

/// One exposed port and where it is published on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortFacts {
    pub port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
    /// (host IP, host port) bindings; empty when not published.
    pub bindings: Vec<(String, u16)>,
}

/// What the watcher learned from `docker inspect`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerFacts {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub image: String,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortFacts>,
    /// Network name -> container IP.
    pub networks: BTreeMap<String, String>,
    pub health: Option<DockerHealth>,
}

/// How containers are turned into registrations.
#[derive(Clone, Debug)]
pub struct Mode {
    /// Register exposed ports at the container IP (Registrator's `-internal`).
    pub internal: bool,
    /// With several networks, the one whose IP is used in internal mode.
    pub network: Option<String>,
    /// Only containers that name their service.
    pub explicit: bool,
    /// This agent's node name (default IDs) and address (bindings on 0.0.0.0).
    pub node: String,
    pub advertise: String,
    pub datacenter: String,
}

/// A service registration for one container port.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    pub service: Service,
    pub checks: Vec<HealthCheck>,
}

/// Why something was skipped or defaulted (for the log).
pub type Warnings = Vec<String>;

/// `registry/web:1.2` -> `web`.
pub fn image_basename(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last).to_string()
}

#[derive(Default, Debug)]
struct Settings {
    generic: BTreeMap<String, String>,
    per_port: BTreeMap<u16, BTreeMap<String, String>>,
}

const KNOWN_SUFFIXES: [&str; 4] = ["NAME", "ID", "TAGS", "IGNORE"];

fn parse_settings(facts: &ContainerFacts, warnings: &mut Warnings) -> Settings {
    let mut s = Settings::default();
    let env = facts.env.iter().filter_map(|kv| kv.split_once('='));
    // Environment first, labels second: labels win.
    let labels = facts.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    for (raw_key, value) in env.chain(labels) {
        let Some(key) = raw_key.strip_prefix("SERVICE_") else { continue };
        let key = key.to_ascii_uppercase();
        if let Some((head, rest)) = key.split_once('_')
            && head.chars().all(|c| c.is_ascii_digit())
        {
            match head.parse::<u16>() {
                Ok(port) if !rest.is_empty() => {
                    s.per_port.entry(port).or_default().insert(rest.to_string(), value.to_string());
                }
                _ => warnings.push(format!("{raw_key}: {head:?} is not a port number; ignored")),
            }
            continue;
        }
        if let Some((head, tail)) = key.rsplit_once('_')
            && KNOWN_SUFFIXES.contains(&tail)
            && !head.starts_with("CHECK")
        {
            warnings.push(format!("{raw_key}: {head:?} is not a port number; ignored"));
            continue;
        }
        s.generic.insert(key, value.to_string());
    }
    // wharf's own labels, over everything.
    let l = &facts.labels;
    let mut set = |k: &str, label: &str| {
        if let Some(v) = l.get(label) {
            s.generic.insert(k.to_string(), v.clone());
        }
    };
    set("NAME", "wharf.service");
    set("TAGS", "wharf.tags");
    set("IGNORE", "wharf.ignore");
    set("WHARF-ROUTE", "wharf.route");
    set("WHARF-LB", "wharf.lb");
    s
}

fn truthy(v: Option<&String>) -> bool {
    v.is_some_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no"))
}

fn valid_meta_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 128 && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn duration_or_default(key: &str, value: Option<&String>, default: &str, warnings: &mut Warnings) -> String {
    match value {
        None => default.to_string(),
        Some(v) => match parse_go_duration(v, false) {
            Ok(d) if !d.is_zero() => v.trim().to_string(),
            _ => {
                warnings.push(format!("SERVICE_{key}={v:?} is not a duration (e.g. 10s); using {default}"));
                default.to_string()
            }
        },
    }
}

/// Turns a container into its registrations, with the reasons for anything skipped.
pub fn registrations(facts: &ContainerFacts, mode: &Mode) -> (Vec<Registration>, Warnings) {
    let mut warnings = Warnings::new();
    let settings = parse_settings(facts, &mut warnings);
    let name = &facts.name;
    if truthy(settings.generic.get("IGNORE")) {
        warnings.push(format!("{name}: SERVICE_IGNORE is set; not registered"));
        return (Vec::new(), warnings);
    }
    let ports = eligible_ports(facts, mode, &settings, &mut warnings);
    if ports.is_empty() {
        if facts.ports.is_empty() {
            warnings.push(format!("{name}: no exposed ports; nothing to register"));
        }
        return (Vec::new(), warnings);
    }
    for port in settings.per_port.keys() {
        if !facts.ports.iter().any(|p| p.port == *port) {
            warnings.push(format!("{name}: SERVICE_{port}_* given but port {port} is not exposed; ignored"));
        }
    }
    let several = ports.len() > 1;
    let container_ip = match &mode.network {
        Some(net) => facts.networks.get(net).cloned(),
        None => facts.networks.values().find(|ip| !ip.is_empty()).cloned(),
    };
    let target = Target { facts, mode, settings: &settings, several, container_ip: container_ip.as_deref() };
    let out = ports.into_iter().filter_map(|p| target.port_registration(p, &mut warnings)).collect();
    (out, warnings)
}

/// The ports to register: those `wharf.port` selects, TCP unless named, published unless
/// the agent registers container addresses.
fn eligible_ports<'f>(
    facts: &'f ContainerFacts,
    mode: &Mode,
    settings: &Settings,
    warnings: &mut Warnings,
) -> Vec<&'f PortFacts> {
    let name = &facts.name;
    let only_port: Option<u16> = match facts.labels.get("wharf.port") {
        None => None,
        Some(p) => match p.trim().parse::<u16>() {
            Ok(p) => Some(p),
            Err(_) => {
                warnings.push(format!("{name}: label wharf.port={p:?} is not a port number; ignored"));
                None
            }
        },
    };
    let mut ports: Vec<&PortFacts> = Vec::new();
    for p in facts.ports.iter().filter(|p| only_port.is_none_or(|o| o == p.port)) {
        if p.proto != "tcp" && !settings.per_port.get(&p.port).is_some_and(|m| m.contains_key("NAME")) {
            warnings.push(format!(
                "{name}: {}/{} skipped: wharf routes TCP; set SERVICE_{}_NAME to register it",
                p.port, p.proto, p.port
            ));
            continue;
        }
        if !mode.internal && p.bindings.is_empty() {
            warnings.push(format!(
                "{name}: port {}/{} is not published; publish it or run with --docker-internal",
                p.port, p.proto
            ));
            continue;
        }
        ports.push(p);
    }
    ports.sort_by_key(|p| (p.port, p.proto.clone()));
    ports
}

/// One container as seen for registering its ports.
struct Target<'a> {
    facts: &'a ContainerFacts,
    mode: &'a Mode,
    settings: &'a Settings,
    /// More than one port is registered (names and IDs then carry the port).
    several: bool,
    container_ip: Option<&'a str>,
}

impl Target<'_> {
    /// The service one port registers, with its checks; `None` when skipped (said why).
    fn port_registration(&self, p: &PortFacts, warnings: &mut Warnings) -> Option<Registration> {
        let (facts, mode, settings, several, name) =
            (self.facts, self.mode, self.settings, self.several, &self.facts.name);
        let mut m = settings.generic.clone();
        if let Some(specific) = settings.per_port.get(&p.port) {
            m.extend(specific.clone());
        }
        if truthy(m.get("IGNORE")) {
            warnings.push(format!("{name}: port {} ignored by SERVICE_{}_IGNORE", p.port, p.port));
            return None;
        }
        let explicit_name = m.get("NAME").filter(|n| !n.trim().is_empty()).cloned();
        if mode.explicit && explicit_name.is_none() {
            return None;
        }
        let service_name = explicit_name.unwrap_or_else(|| {
            let base = image_basename(&facts.image);
            if several { format!("{base}-{}", p.port) } else { base }
        });
        let udp = if p.proto == "udp" { ":udp" } else { "" };
        let id = match m.get("ID").filter(|v| !v.trim().is_empty()) {
            Some(id) if several && !settings.per_port.get(&p.port).is_some_and(|s| s.contains_key("ID")) => {
                format!("{id}:{}{udp}", p.port)
            }
            Some(id) => id.clone(),
            None => format!("{}:{}:{}{udp}", mode.node, name, p.port),
        };
        let (address, port) = if mode.internal {
            match self.container_ip {
                Some(ip) => (ip.to_string(), p.port),
                None => {
                    warnings.push(format!(
                        "{name}: no IP on network {:?}; port {} not registered",
                        mode.network.as_deref().unwrap_or("(any)"),
                        p.port
                    ));
                    return None;
                }
            }
        } else {
            let (ip, host_port) = &p.bindings[0];
            let ip = if ip.is_empty() || ip == "0.0.0.0" || ip == "::" { mode.advertise.clone() } else { ip.clone() };
            (ip, *host_port)
        };
        let tags: Vec<String> = m
            .get("TAGS")
            .map(|t| t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
        let mut meta = BTreeMap::new();
        for (k, v) in &m {
            if matches!(k.as_str(), "NAME" | "ID" | "TAGS" | "IGNORE") || k.starts_with("CHECK_") {
                continue;
            }
            let key = k.to_ascii_lowercase();
            if valid_meta_key(&key) {
                meta.insert(key, v.clone());
            } else {
                warnings.push(format!("{name}: SERVICE_{k} is not a valid meta key; ignored"));
            }
        }
        meta.insert(CONTAINER_META.to_string(), facts.id.clone());
        let service = Service {
            id: id.clone(),
            service: service_name.clone(),
            tags: tags.clone(),
            address: address.clone(),
            port,
            meta,
            weights: Weights::default(),
            enable_tag_override: false,
            datacenter: mode.datacenter.clone(),
            create_index: 0,
            modify_index: 0,
        };
        let checks = self.port_checks(&m, &service, warnings);
        Some(Registration { service, checks })
    }

    /// The lifecycle check, the probe the labels ask for, and Docker's HEALTHCHECK.
    fn port_checks(
        &self,
        m: &BTreeMap<String, String>,
        service: &Service,
        warnings: &mut Warnings,
    ) -> Vec<HealthCheck> {
        let (mode, name, id, service_name, tags) =
            (self.mode, &self.facts.name, &service.id, &service.service, &service.tags);
        let (address, port) = (service.address.as_str(), service.port);
        let check =
            |check_id: String, name: String, status: CheckStatus, output: String, def: CheckDefinition| HealthCheck {
                node: mode.node.clone(),
                check_id,
                name,
                status,
                notes: String::new(),
                output,
                service_id: id.clone(),
                service_name: service_name.clone(),
                service_tags: tags.clone(),
                kind: def.kind(),
                interval: def.interval.clone(),
                timeout: def.timeout.clone(),
                definition: def,
                create_index: 0,
                modify_index: 0,
            };
        let mut checks = vec![check(
            format!("{LIFECYCLE_CHECK_PREFIX}{id}"),
            "Docker container running".into(),
            CheckStatus::Passing,
            format!("container {name} is running"),
            CheckDefinition::default(),
        )];
        let initial = match m.get("CHECK_INITIAL_STATUS") {
            None => None,
            Some(s) => {
                match CheckStatus::parse(&s.trim().to_ascii_lowercase()) {
                    Some(st) => Some(st),
                    None => {
                        warnings.push(format!("{name}: SERVICE_CHECK_INITIAL_STATUS={s:?} is not passing, warning or critical; using critical"));
                        None
                    }
                }
            }
        };
        let probe = probe_definition(m, address, port, warnings);
        if let Some(def) = probe {
            checks.push(check(
                format!("service:{id}"),
                format!("Service '{service_name}' check"),
                initial.unwrap_or(CheckStatus::Critical),
                String::new(),
                def,
            ));
        }
        if let Some(h) = self.facts.health {
            let (status, output) = docker_health_status(h, initial);
            checks.push(check(
                format!("{HEALTH_CHECK_PREFIX}{id}"),
                "Docker HEALTHCHECK".into(),
                status,
                output,
                CheckDefinition::default(),
            ));
        }
        checks
    }
}

/// The check definition the `SERVICE_CHECK_*` labels describe, if any.
fn probe_definition(
    m: &BTreeMap<String, String>,
    address: &str,
    port: u16,
    warnings: &mut Warnings,
) -> Option<CheckDefinition> {
    let interval = duration_or_default("CHECK_INTERVAL", m.get("CHECK_INTERVAL"), "10s", warnings);
    let timeout = match m.get("CHECK_TIMEOUT") {
        Some(_) => duration_or_default("CHECK_TIMEOUT", m.get("CHECK_TIMEOUT"), "5s", warnings),
        None => String::new(),
    };
    let deregister = match m.get("CHECK_DEREGISTER_AFTER") {
        Some(_) => duration_or_default("CHECK_DEREGISTER_AFTER", m.get("CHECK_DEREGISTER_AFTER"), "1m", warnings),
        None => String::new(),
    };
    let base = CheckDefinition {
        interval: interval.clone(),
        timeout,
        deregister_critical_service_after: deregister,
        ..Default::default()
    };
    if let Some(path) = m.get("CHECK_HTTP") {
        Some(CheckDefinition { http: format!("http://{address}:{port}{}", normalize_path(path)), ..base.clone() })
    } else if let Some(path) = m.get("CHECK_HTTPS") {
        Some(CheckDefinition {
            http: format!("https://{address}:{port}{}", normalize_path(path)),
            tls_skip_verify: true,
            ..base.clone()
        })
    } else if truthy(m.get("CHECK_TCP")) {
        Some(CheckDefinition { tcp: format!("{address}:{port}"), ..base.clone() })
    } else if let Some(ttl) = m.get("CHECK_TTL") {
        let ttl = duration_or_default("CHECK_TTL", Some(ttl), "30s", warnings);
        Some(CheckDefinition { ttl, interval: String::new(), ..base.clone() })
    } else if let Some(module) = m.get("CHECK_WASM").filter(|v| !v.trim().is_empty()) {
        let config = m.get("CHECK_WASM_CONFIG").cloned().unwrap_or_default();
        Some(CheckDefinition {
            wasm: Some(catalog::model::WasmCheck { module: module.trim().to_string(), config }),
            ..base.clone()
        })
    } else {
        None
    }
}

/// The catalog status mirroring a Docker health state.
pub fn docker_health_status(h: DockerHealth, initial: Option<CheckStatus>) -> (CheckStatus, String) {
    match h {
        DockerHealth::Starting => (initial.unwrap_or(CheckStatus::Critical), "Docker HEALTHCHECK: starting".into()),
        DockerHealth::Healthy => (CheckStatus::Passing, "Docker HEALTHCHECK: healthy".into()),
        DockerHealth::Unhealthy => (CheckStatus::Critical, "Docker HEALTHCHECK: unhealthy".into()),
    }
}

fn normalize_path(p: &str) -> String {
    let p = p.trim();
    if p.starts_with('/') { p.to_string() } else { format!("/{p}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode() -> Mode {
        Mode {
            internal: false,
            network: None,
            explicit: false,
            node: "host1".into(),
            advertise: "10.0.0.9".into(),
            datacenter: "dc1".into(),
        }
    }

    fn facts(env: &[&str], labels: &[(&str, &str)], ports: Vec<PortFacts>) -> ContainerFacts {
        ContainerFacts {
            id: "abc123".into(),
            name: "demo_web_1".into(),
            image: "registry.local:5000/team/web:1.4".into(),
            env: env.iter().map(|s| s.to_string()).collect(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ports,
            networks: BTreeMap::from([("bridge".into(), "172.17.0.5".into()), ("backend".into(), "172.20.0.7".into())]),
            health: None,
        }
    }

    fn tcp(port: u16, binding: Option<(&str, u16)>) -> PortFacts {
        PortFacts {
            port,
            proto: "tcp".into(),
            bindings: binding.map(|(ip, p)| vec![(ip.to_string(), p)]).unwrap_or_default(),
        }
    }

    #[test]
    fn defaults_follow_registrator() {
        let (regs, w) = registrations(&facts(&[], &[], vec![tcp(8080, Some(("0.0.0.0", 32768)))]), &mode());
        assert!(w.is_empty(), "{w:?}");
        let s = &regs[0].service;
        assert_eq!(s.service, "web", "image basename without tag");
        assert_eq!(s.id, "host1:demo_web_1:8080");
        assert_eq!((s.address.as_str(), s.port), ("10.0.0.9", 32768), "0.0.0.0 binding -> --advertise");
        assert_eq!(s.meta.get(CONTAINER_META).map(String::as_str), Some("abc123"));
        assert_eq!(regs[0].checks[0].check_id, "wharf-docker:host1:demo_web_1:8080");
        assert_eq!(regs[0].checks[0].status, CheckStatus::Passing);
    }

    #[test]
    fn several_ports_get_suffixes_and_specific_settings() {
        let f = facts(
            &["SERVICE_TAGS=a,b", "SERVICE_443_NAME=secure", "SERVICE_443_TAGS=tls", "SERVICE_VERSION=2"],
            &[],
            vec![tcp(80, Some(("127.0.0.1", 8001))), tcp(443, Some(("127.0.0.1", 8002)))],
        );
        let (regs, _) = registrations(&f, &mode());
        assert_eq!(regs.len(), 2);
        assert_eq!(regs[0].service.service, "web-80");
        assert_eq!(regs[0].service.tags, ["a", "b"]);
        assert_eq!(regs[0].service.address, "127.0.0.1", "a specific binding IP is kept");
        assert_eq!(regs[1].service.service, "secure");
        assert_eq!(regs[1].service.tags, ["tls"], "port-specific beats generic");
        assert_eq!(regs[1].service.meta.get("version").map(String::as_str), Some("2"));
    }

    #[test]
    fn labels_win_over_env_and_wharf_labels_over_both() {
        let f = facts(
            &["SERVICE_NAME=from-env", "SERVICE_ID=x"],
            &[("SERVICE_NAME", "from-label")],
            vec![tcp(80, Some(("", 1)))],
        );
        let (regs, _) = registrations(&f, &mode());
        assert_eq!(regs[0].service.service, "from-label");
        assert_eq!(regs[0].service.id, "x");
        let f = facts(
            &["SERVICE_NAME=env"],
            &[
                ("wharf.service", "shop"),
                ("wharf.tags", "v1, blue"),
                ("wharf.route", "/shop strip=/shop"),
                ("wharf.lb", "least_conn"),
            ],
            vec![tcp(80, Some(("", 1))), tcp(9000, Some(("", 2)))],
        );
        let (regs, _) = registrations(&f, &mode());
        assert_eq!(regs[0].service.service, "shop");
        assert_eq!(regs[0].service.tags, ["v1", "blue"]);
        assert_eq!(regs[0].service.meta.get("wharf-route").map(String::as_str), Some("/shop strip=/shop"));
        assert_eq!(regs[0].service.meta.get("wharf-lb").map(String::as_str), Some("least_conn"));
        let f = facts(&[], &[("wharf.port", "9000")], vec![tcp(80, Some(("", 1))), tcp(9000, Some(("", 2)))]);
        let (regs, _) = registrations(&f, &mode());
        assert_eq!(regs.len(), 1, "wharf.port picks one port");
        assert_eq!(regs[0].service.port, 2);
        assert_eq!(regs[0].service.service, "web", "one service port: no suffix");
    }

    #[test]
    fn ignore_generic_and_per_port() {
        let f = facts(&["SERVICE_IGNORE=true"], &[], vec![tcp(80, Some(("", 1)))]);
        assert!(registrations(&f, &mode()).0.is_empty());
        let f = facts(&["SERVICE_80_IGNORE=1"], &[], vec![tcp(80, Some(("", 1))), tcp(81, Some(("", 2)))]);
        let (regs, _) = registrations(&f, &mode());
        assert_eq!(regs.iter().map(|r| r.service.port).collect::<Vec<_>>(), [2]);
        let f = facts(&[], &[("wharf.ignore", "yes")], vec![tcp(80, Some(("", 1)))]);
        assert!(registrations(&f, &mode()).0.is_empty());
    }

    #[test]
    fn checks_from_service_check_keys() {
        let f = facts(
            &[
                "SERVICE_CHECK_HTTP=/health",
                "SERVICE_CHECK_INTERVAL=5s",
                "SERVICE_CHECK_TIMEOUT=1s",
                "SERVICE_CHECK_INITIAL_STATUS=passing",
                "SERVICE_CHECK_DEREGISTER_AFTER=90s",
            ],
            &[],
            vec![tcp(8080, Some(("127.0.0.1", 30000)))],
        );
        let (regs, _) = registrations(&f, &mode());
        let c = &regs[0].checks[1];
        assert_eq!(c.definition.http, "http://127.0.0.1:30000/health");
        assert_eq!((c.interval.as_str(), c.timeout.as_str()), ("5s", "1s"));
        assert_eq!(c.status, CheckStatus::Passing);
        assert_eq!(c.definition.deregister_critical_service_after, "90s");
        assert_eq!(c.check_id, "service:host1:demo_web_1:8080");
        let https = registrations(&facts(&["SERVICE_CHECK_HTTPS=ping"], &[], vec![tcp(443, Some(("", 1)))]), &mode()).0;
        assert_eq!(https[0].checks[1].definition.http, "https://10.0.0.9:1/ping");
        assert!(https[0].checks[1].definition.tls_skip_verify);
        let tcp_check =
            registrations(&facts(&["SERVICE_CHECK_TCP=true"], &[], vec![tcp(6379, Some(("", 7)))]), &mode()).0;
        assert_eq!(tcp_check[0].checks[1].definition.tcp, "10.0.0.9:7");
        assert_eq!(tcp_check[0].checks[1].status, CheckStatus::Critical, "initial status critical by default");
        let ttl = registrations(&facts(&["SERVICE_CHECK_TTL=30s"], &[], vec![tcp(1, Some(("", 1)))]), &mode()).0;
        assert_eq!(ttl[0].checks[1].definition.ttl, "30s");
        assert_eq!(ttl[0].checks[1].kind, "ttl");
        let wasm = registrations(
            &facts(
                &["SERVICE_CHECK_WASM=tomcat_status", r#"SERVICE_CHECK_WASM_CONFIG={"warn_percent": 80}"#],
                &[],
                vec![tcp(8080, Some(("", 9)))],
            ),
            &mode(),
        )
        .0;
        let w = &wasm[0].checks[1];
        assert_eq!(w.kind, "wasm");
        let def = w.definition.wasm.as_ref().expect("wasm definition");
        assert_eq!((def.module.as_str(), def.config.as_str()), ("tomcat_status", r#"{"warn_percent": 80}"#));
        assert_eq!(w.interval, "10s");
        assert!(wasm[0].service.meta.keys().all(|k| !k.contains("check")), "CHECK_WASM_* is not meta");
    }

    #[test]
    fn malformed_values_are_reported_and_defaulted() {
        let f = facts(
            &[
                "SERVICE_CHECK_TCP=1",
                "SERVICE_CHECK_INTERVAL=often",
                "SERVICE_abc_NAME=x",
                "SERVICE_CHECK_INITIAL_STATUS=green",
                "SERVICE_99_NAME=ghost",
            ],
            &[],
            vec![tcp(80, Some(("", 1)))],
        );
        let (regs, w) = registrations(&f, &mode());
        assert_eq!(regs.len(), 1, "still registered");
        assert_eq!(regs[0].checks[1].interval, "10s", "bad interval -> default");
        assert_eq!(regs[0].service.service, "web", "SERVICE_abc_NAME ignored");
        let all = w.join("\n");
        assert!(all.contains("\"often\""), "{all}");
        assert!(all.contains("SERVICE_abc_NAME"), "{all}");
        assert!(all.contains("green"), "{all}");
        assert!(all.contains("port 99 is not exposed"), "{all}");
    }

    #[test]
    fn no_ports_udp_and_unpublished() {
        let (regs, w) = registrations(&facts(&[], &[], vec![]), &mode());
        assert!(regs.is_empty() && w[0].contains("no exposed ports"));
        let udp = PortFacts { port: 53, proto: "udp".into(), bindings: vec![("".into(), 5353)] };
        let (regs, w) = registrations(&facts(&[], &[], vec![udp.clone()]), &mode());
        assert!(regs.is_empty() && w[0].contains("53/udp skipped"));
        let (regs, _) = registrations(&facts(&["SERVICE_53_NAME=dns"], &[], vec![udp]), &mode());
        assert_eq!(regs[0].service.id, "host1:demo_web_1:53:udp");
        let (regs, w) = registrations(&facts(&[], &[], vec![tcp(80, None)]), &mode());
        assert!(regs.is_empty() && w[0].contains("--docker-internal"), "{w:?}");
    }

    #[test]
    fn internal_mode_uses_container_ip_and_exposed_port() {
        let f = facts(&[], &[], vec![tcp(8080, None)]);
        let m = Mode { internal: true, network: Some("backend".into()), ..mode() };
        let (regs, _) = registrations(&f, &m);
        assert_eq!((regs[0].service.address.as_str(), regs[0].service.port), ("172.20.0.7", 8080));
        let m = Mode { internal: true, network: Some("nope".into()), ..mode() };
        let (regs, w) = registrations(&f, &m);
        assert!(regs.is_empty() && w[0].contains("no IP on network"));
    }

    #[test]
    fn explicit_mode_and_docker_health() {
        let f = facts(&[], &[], vec![tcp(80, Some(("", 1)))]);
        let m = Mode { explicit: true, ..mode() };
        assert!(registrations(&f, &m).0.is_empty());
        let named = facts(&["SERVICE_NAME=web"], &[], vec![tcp(80, Some(("", 1)))]);
        assert_eq!(registrations(&named, &m).0.len(), 1);
        let mut h = facts(&[], &[], vec![tcp(80, Some(("", 1)))]);
        h.health = Some(DockerHealth::Starting);
        let regs = registrations(&h, &mode()).0;
        let hc = regs[0].checks.iter().find(|c| c.check_id.starts_with(HEALTH_CHECK_PREFIX)).expect("health check");
        assert_eq!(hc.status, CheckStatus::Critical, "starting -> critical");
        assert_eq!(docker_health_status(DockerHealth::Healthy, None).0, CheckStatus::Passing);
        assert_eq!(docker_health_status(DockerHealth::Starting, Some(CheckStatus::Passing)).0, CheckStatus::Passing);
    }

    #[test]
    fn image_names() {
        assert_eq!(image_basename("nginx"), "nginx");
        assert_eq!(image_basename("library/nginx:1.25"), "nginx");
        assert_eq!(image_basename("localhost:5000/a/b:tag"), "b");
        assert_eq!(image_basename("web@sha256:abc"), "web");
    }
}
