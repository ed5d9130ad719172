//! The route table: an immutable value built from a catalog snapshot off the request path
//! and published through arc-swap. The request path does one lookup in it.
//!
//! Routes, in order of precedence:
//! 1. Fabio-style tags `urlprefix-[HOST]/PATH [strip=/PREFIX]` (or service meta
//!    `wharf-route`), host-specific routes before hostless ones, longest prefix first; the
//!    pool holds the instances carrying that tag;
//! 2. `<service>.<domain>` host names (all instances of the service);
//! 3. the default service (`--default-service`, overridden by KV `wharf/proxy/default-service`).
//!
//! Pools hold only instances whose checks all pass (or also warning ones with
//! `route_warning`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use catalog::model::CheckStatus;
use catalog::state::{CatalogState, ServiceHealth};

use crate::balance::{Policy, Pool, Upstream, UpstreamState};
use crate::metrics::{ProxyMetrics, RouteStats, ServiceStats};

/// KV key whose value, when set, names the default service.
pub const DEFAULT_SERVICE_KEY: &str = "wharf/proxy/default-service";
/// Service meta naming the balancing policy.
pub const LB_META: &str = "wharf-lb";
/// Service meta adding a route (`HOST/PATH` or `/PATH`, with optional ` strip=/P`).
pub const ROUTE_META: &str = "wharf-route";

/// Settings the table is built with.
#[derive(Clone, Debug)]
pub struct TableSettings {
    /// Host names `<service>.<domain>` route to `service`.
    pub domain: String,
    pub default_service: Option<String>,
    /// Include instances whose worst check is `warning`.
    pub route_warning: bool,
    pub default_policy: Policy,
}

/// A route's target.
#[derive(Debug)]
pub struct Route {
    pub service: String,
    /// Label for metrics and logs (`prefix:host/path`, `host:web.localhost`, `default`).
    pub label: String,
    pub host: Option<String>,
    pub prefix: String,
    /// Path prefix removed before proxying.
    pub strip: Option<String>,
    pub pool: Arc<Pool>,
    pub stats: Arc<RouteStats>,
    pub service_stats: Arc<ServiceStats>,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// Catalog index the table was built from.
    pub index: u64,
    host_prefix_routes: Vec<Arc<Route>>,
    prefix_routes: Vec<Arc<Route>>,
    host_routes: HashMap<String, Arc<Route>>,
    default: Option<Arc<Route>>,
}

/// A parsed `urlprefix-` tag.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PrefixSpec {
    pub host: Option<String>,
    pub prefix: String,
    pub strip: Option<String>,
}

/// Parses a Fabio route spec `[HOST]/PATH [strip=/P]` (the part after `urlprefix-`).
pub fn parse_route_spec(spec: &str) -> Option<PrefixSpec> {
    let mut parts = spec.split_whitespace();
    let target = parts.next()?;
    let slash = target.find('/')?;
    let host = &target[..slash];
    let prefix = &target[slash..];
    let mut strip = None;
    for opt in parts {
        if let Some(s) = opt.strip_prefix("strip=")
            && s.starts_with('/')
        {
            strip = Some(s.to_string());
        }
    }
    Some(PrefixSpec {
        host: if host.is_empty() { None } else { Some(host.to_ascii_lowercase()) },
        prefix: prefix.to_string(),
        strip,
    })
}

/// The host part of a Host header, lower-cased, without port (borrowed when already so).
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let h = host.trim();
    let without_port = if h.starts_with('[') {
        match h.find(']') {
            Some(i) => &h[..=i],
            None => return Cow::Owned(format!("{}]", h.to_ascii_lowercase())),
        }
    } else {
        h.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map(|(a, _)| a).unwrap_or(h)
    };
    let bare = without_port.trim_end_matches('.');
    if bare.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(bare.to_ascii_lowercase())
    } else {
        Cow::Borrowed(bare)
    }
}

impl RouteTable {
    /// The route for a request.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let host = normalize_host(host);
        self.host_prefix_routes
            .iter()
            .find(|r| r.host.as_deref() == Some(&*host) && path.starts_with(&r.prefix))
            .or_else(|| self.prefix_routes.iter().find(|r| path.starts_with(&r.prefix)))
            .or_else(|| self.host_routes.get(&*host))
            .or(self.default.as_ref())
    }

    pub fn route_count(&self) -> usize {
        self.host_prefix_routes.len()
            + self.prefix_routes.len()
            + self.host_routes.len()
            + usize::from(self.default.is_some())
    }
}

/// Builds tables, keeping per-upstream state (in-flight counts, ejections) across builds.
pub struct TableBuilder {
    settings: TableSettings,
    upstream_state: HashMap<(String, SocketAddr), Arc<UpstreamState>>,
    metrics: Arc<ProxyMetrics>,
}

fn instance_addr(h: &ServiceHealth) -> Option<SocketAddr> {
    let raw = if h.service.address.is_empty() { &h.node.address } else { &h.service.address };
    let ip: IpAddr = raw.trim_matches(['[', ']']).parse().ok()?;
    if h.service.port == 0 {
        return None;
    }
    Some(SocketAddr::new(ip, h.service.port))
}

impl TableBuilder {
    pub fn new(settings: TableSettings, metrics: Arc<ProxyMetrics>) -> Self {
        TableBuilder { settings, upstream_state: HashMap::new(), metrics }
    }

    fn healthy(&self, state: &CatalogState, service: &str) -> Vec<ServiceHealth> {
        let (entries, _) = state.service_health(service, &[], false);
        entries
            .into_iter()
            .filter(|h| match h.aggregate() {
                CheckStatus::Passing => true,
                CheckStatus::Warning => self.settings.route_warning,
                CheckStatus::Critical => false,
            })
            .collect()
    }

    fn policy_for(&self, service: &str, instances: &[ServiceHealth]) -> Policy {
        match instances.iter().find_map(|h| h.service.meta.get(LB_META)) {
            Some(raw) => Policy::parse(raw).unwrap_or_else(|e| {
                tracing::warn!(service, "ignoring {LB_META}: {e}");
                self.settings.default_policy.clone()
            }),
            None => self.settings.default_policy.clone(),
        }
    }

    fn pool(&mut self, service: &str, instances: &[&ServiceHealth], policy: Policy) -> Arc<Pool> {
        let mut ups = Vec::with_capacity(instances.len());
        for h in instances {
            let Some(addr) = instance_addr(h) else {
                tracing::debug!(service, id = %h.service.id, "instance without an IP address and port: not routed");
                continue;
            };
            let weight = match h.aggregate() {
                CheckStatus::Warning => h.service.weights.warning,
                _ => h.service.weights.passing,
            };
            let state = self.upstream_state.entry((service.to_string(), addr)).or_default().clone();
            ups.push(Arc::new(Upstream { id: h.service.id.clone(), addr, weight: weight.max(1), state }));
        }
        // A stable order, so round robin and hashing do not depend on catalog order.
        ups.sort_by_key(|u| u.addr);
        ups.dedup_by(|a, b| a.addr == b.addr);
        Arc::new(Pool::new(service.to_string(), ups, policy))
    }

    fn route(&self, service: &str, label: String, spec: Option<&PrefixSpec>, pool: Arc<Pool>) -> Arc<Route> {
        Arc::new(Route {
            service: service.to_string(),
            stats: self.metrics.route_stats(service, &label),
            service_stats: self.metrics.service_stats(service),
            label,
            host: spec.and_then(|s| s.host.clone()),
            prefix: spec.map(|s| s.prefix.clone()).unwrap_or_default(),
            strip: spec.and_then(|s| s.strip.clone()),
            pool,
        })
    }

    /// Builds the table for `state`.
    pub fn build(&mut self, state: &CatalogState) -> RouteTable {
        let (names, _) = state.service_names();
        let mut table = RouteTable { index: state.last_index(), ..Default::default() };
        let mut sizes = BTreeMap::new();
        let domain = self.settings.domain.trim_matches('.').to_ascii_lowercase();
        let mut live = std::collections::HashSet::new();
        for service in names.keys() {
            // The servers' own `consul` service (as Consul registers it, for DNS) points at
            // their Raft ports: never a proxy upstream.
            if service == "consul" {
                continue;
            }
            // All instances decide which routes exist; healthy ones fill the pools, so a
            // route whose instances are all sick answers 503, not 404.
            let (all, _) = state.service_health(service, &[], false);
            let healthy = self.healthy(state, service);
            let policy = self.policy_for(service, &all);
            let everyone: Vec<&ServiceHealth> = healthy.iter().collect();
            let pool = self.pool(service, &everyone, policy.clone());
            sizes.insert(service.clone(), pool.upstreams.len());
            for u in &pool.upstreams {
                live.insert((service.clone(), u.addr));
            }

            // Prefix routes from tags and meta, each with the instances that declare it.
            let mut specs: BTreeMap<PrefixSpec, Vec<String>> = BTreeMap::new();
            for h in &all {
                let declared = h
                    .service
                    .tags
                    .iter()
                    .filter_map(|t| t.strip_prefix("urlprefix-"))
                    .chain(h.service.meta.get(ROUTE_META).map(String::as_str))
                    .filter_map(parse_route_spec);
                for spec in declared {
                    specs.entry(spec).or_default().push(h.service.id.clone());
                }
            }
            for (spec, ids) in specs {
                let members: Vec<&ServiceHealth> = healthy.iter().filter(|h| ids.contains(&h.service.id)).collect();
                let route_pool = if members.len() == healthy.len() {
                    pool.clone()
                } else {
                    self.pool(service, &members, policy.clone())
                };
                let label = format!("prefix:{}{}", spec.host.as_deref().unwrap_or(""), spec.prefix);
                let route = self.route(service, label, Some(&spec), route_pool);
                if route.host.is_some() {
                    table.host_prefix_routes.push(route);
                } else {
                    table.prefix_routes.push(route);
                }
            }

            if !domain.is_empty() {
                let host = format!("{}.{domain}", service.to_ascii_lowercase());
                let route = self.route(service, format!("host:{host}"), None, pool.clone());
                table.host_routes.insert(host, route);
            }
        }
        table.host_prefix_routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        table.prefix_routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));

        let kv_default = state
            .kv_get(DEFAULT_SERVICE_KEY)
            .0
            .map(|e| String::from_utf8_lossy(&e.value).trim().to_string())
            .filter(|s| !s.is_empty());
        if let Some(service) = kv_default.or_else(|| self.settings.default_service.clone()) {
            let pool = match table.host_routes.values().find(|r| r.service == service) {
                Some(r) => r.pool.clone(),
                None => Arc::new(Pool::new(service.clone(), Vec::new(), self.settings.default_policy.clone())),
            };
            table.default = Some(self.route(&service, "default".into(), None, pool));
        }
        // Forget state of instances that left, so a returning one starts clean.
        self.upstream_state.retain(|k, _| live.contains(k));
        self.metrics.set_pool_sizes(sizes);
        table
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use catalog::command::Command;
    use catalog::model::{HealthCheck, Node, Service};

    use super::*;

    fn settings() -> TableSettings {
        TableSettings {
            domain: "localhost".into(),
            default_service: None,
            route_warning: false,
            default_policy: Policy::RoundRobin,
        }
    }

    fn register(s: &mut CatalogState, idx: u64, id: &str, name: &str, port: u16, tags: &[&str], status: CheckStatus) {
        let node = Node { node: "n1".into(), address: "127.0.0.1".into(), ..Default::default() };
        let service = Service {
            id: id.into(),
            service: name.into(),
            port,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            meta: BTreeMap::new(),
            ..Default::default()
        };
        let check = HealthCheck { check_id: format!("{id}-c"), service_id: id.into(), status, ..Default::default() };
        s.apply(
            idx,
            &Command::Register {
                node,
                service: Some(service),
                checks: vec![check],
                skip_node_update: false,
                replace_service_checks: false,
            },
        );
    }

    fn build(s: &CatalogState, settings: TableSettings) -> RouteTable {
        TableBuilder::new(settings, Arc::default()).build(s)
    }

    #[test]
    fn parses_fabio_specs() {
        assert_eq!(
            parse_route_spec("Example.com/api strip=/api"),
            Some(PrefixSpec { host: Some("example.com".into()), prefix: "/api".into(), strip: Some("/api".into()) })
        );
        assert_eq!(parse_route_spec("/"), Some(PrefixSpec { host: None, prefix: "/".into(), strip: None }));
        assert_eq!(parse_route_spec("nohost"), None);
        assert_eq!(normalize_host("Web.LocalHost:8080"), "web.localhost");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }

    #[test]
    fn routes_by_prefix_host_and_default() {
        let mut s = CatalogState::default();
        register(&mut s, 2, "api-1", "api", 9001, &["urlprefix-/api strip=/api"], CheckStatus::Passing);
        register(&mut s, 3, "v2-1", "apiv2", 9002, &["urlprefix-/api/v2"], CheckStatus::Passing);
        register(&mut s, 4, "shop-1", "shop", 9003, &["urlprefix-shop.example.com/"], CheckStatus::Passing);
        register(&mut s, 5, "web-1", "web", 9004, &[], CheckStatus::Passing);
        let t = build(&s, TableSettings { default_service: Some("web".into()), ..settings() });
        let svc = |host: &str, path: &str| t.lookup(host, path).map(|r| r.service.clone());
        assert_eq!(svc("x", "/api/users").as_deref(), Some("api"));
        assert_eq!(svc("x", "/api/v2/users").as_deref(), Some("apiv2"), "longest prefix wins");
        assert_eq!(svc("shop.example.com", "/api/x").as_deref(), Some("shop"), "host-specific first");
        assert_eq!(svc("Web.localhost:80", "/").as_deref(), Some("web"));
        assert_eq!(svc("api.localhost", "/anything").as_deref(), Some("api"));
        assert_eq!(svc("other", "/").as_deref(), Some("web"), "default service");
        assert_eq!(t.lookup("x", "/api/u").and_then(|r| r.strip.clone()).as_deref(), Some("/api"));
        let no_default = build(&s, settings());
        assert!(no_default.lookup("other", "/").is_none());
    }

    #[test]
    fn only_healthy_instances_enter_pools() {
        let mut s = CatalogState::default();
        register(&mut s, 2, "web-1", "web", 9001, &[], CheckStatus::Passing);
        register(&mut s, 3, "web-2", "web", 9002, &[], CheckStatus::Warning);
        register(&mut s, 4, "web-3", "web", 9003, &[], CheckStatus::Critical);
        let t = build(&s, settings());
        let pool = &t.lookup("web.localhost", "/").expect("route").pool;
        assert_eq!(pool.upstreams.iter().map(|u| u.addr.port()).collect::<Vec<_>>(), [9001]);
        let t = build(&s, TableSettings { route_warning: true, ..settings() });
        assert_eq!(t.lookup("web.localhost", "/").expect("route").pool.upstreams.len(), 2);
    }

    #[test]
    fn all_sick_keeps_the_route_with_an_empty_pool() {
        let mut s = CatalogState::default();
        register(&mut s, 2, "web-1", "web", 9001, &["urlprefix-/web"], CheckStatus::Critical);
        let t = build(&s, settings());
        let r = t.lookup("x", "/web").expect("route still exists");
        assert!(r.pool.is_empty());
    }

    #[test]
    fn kv_default_service_overrides_flag() {
        let mut s = CatalogState::default();
        register(&mut s, 2, "web-1", "web", 9001, &[], CheckStatus::Passing);
        register(&mut s, 3, "api-1", "api", 9002, &[], CheckStatus::Passing);
        s.apply(4, &Command::KvSet { key: DEFAULT_SERVICE_KEY.into(), value: b"api".to_vec(), flags: 0, cas: None });
        let t = build(&s, TableSettings { default_service: Some("web".into()), ..settings() });
        assert_eq!(t.lookup("other", "/").map(|r| r.service.as_str()), Some("api"));
    }

    #[test]
    fn upstream_state_survives_rebuilds() {
        let mut s = CatalogState::default();
        register(&mut s, 2, "web-1", "web", 9001, &[], CheckStatus::Passing);
        let mut b = TableBuilder::new(settings(), Arc::default());
        let t1 = b.build(&s);
        let st1 = t1.lookup("web.localhost", "/").expect("r").pool.upstreams[0].state.clone();
        register(&mut s, 3, "web-2", "web", 9002, &[], CheckStatus::Passing);
        let t2 = b.build(&s);
        let st2 = t2.lookup("web.localhost", "/").expect("r").pool.upstreams[0].state.clone();
        assert!(Arc::ptr_eq(&st1, &st2));
    }
}
