//! The proxy's Prometheus metrics. Counters live in `Arc`s handed to routes when the
//! table is built, so the request path only does atomic adds; the registry's mutex is
//! taken off the request path (table rebuilds and scrapes).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Requests and latency of one route.
#[derive(Debug)]
pub struct RouteStats {
    pub service: String,
    pub route: String,
    by_status: Box<[AtomicU64]>,
    pub latency: Histogram,
}

impl RouteStats {
    fn new(service: &str, route: &str) -> Self {
        RouteStats {
            service: service.to_string(),
            route: route.to_string(),
            by_status: (0..600).map(|_| AtomicU64::new(0)).collect(),
            latency: Histogram::default(),
        }
    }

    pub fn record(&self, status: u16, elapsed: Duration) {
        if let Some(c) = self.by_status.get(usize::from(status)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.observe(elapsed);
    }
}

/// Upstream-side counters of one service.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub upstream_errors: AtomicU64,
    pub retries: AtomicU64,
    pub ejections: AtomicU64,
}

#[derive(Debug, Default)]
pub struct ProxyMetrics {
    routes: Mutex<BTreeMap<(String, String), Arc<RouteStats>>>,
    services: Mutex<BTreeMap<String, Arc<ServiceStats>>>,
    /// Requests answered without a route (404) or outside any service.
    pub unrouted: AtomicU64,
    pub rebuilds: AtomicU64,
    pub rebuild_duration: Histogram,
    /// Client connections closed for sending their request header too slowly.
    pub header_timeouts: Arc<AtomicU64>,
    pool_sizes: Mutex<BTreeMap<String, usize>>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl ProxyMetrics {
    pub fn route_stats(&self, service: &str, route: &str) -> Arc<RouteStats> {
        let mut m = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((service.to_string(), route.to_string()))
            .or_insert_with(|| Arc::new(RouteStats::new(service, route)))
            .clone()
    }

    pub fn service_stats(&self, service: &str) -> Arc<ServiceStats> {
        let mut m = self.services.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(service.to_string()).or_default().clone()
    }

    pub fn set_pool_sizes(&self, sizes: BTreeMap<String, usize>) {
        *self.pool_sizes.lock().unwrap_or_else(|e| e.into_inner()) = sizes;
    }

    /// Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        let routes: Vec<Arc<RouteStats>> =
            self.routes.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        out.push_str(
            "# HELP wharf_proxy_requests_total Requests answered by the proxy, by service, route and status.\n",
        );
        out.push_str("# TYPE wharf_proxy_requests_total counter\n");
        for r in &routes {
            for (code, c) in r.by_status.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "wharf_proxy_requests_total{{service=\"{}\",route=\"{}\",status=\"{code}\"}} {n}",
                        escape(&r.service),
                        escape(&r.route)
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "wharf_proxy_requests_total{{service=\"\",route=\"none\",status=\"404\"}} {}",
            self.unrouted.load(Ordering::Relaxed)
        );
        out.push_str("# HELP wharf_proxy_request_duration_seconds Time from request to response end.\n");
        out.push_str("# TYPE wharf_proxy_request_duration_seconds histogram\n");
        for r in &routes {
            let labels = format!("service=\"{}\",route=\"{}\"", escape(&r.service), escape(&r.route));
            r.latency.render(out, "wharf_proxy_request_duration_seconds", &labels);
        }
        let services: Vec<(String, Arc<ServiceStats>)> = self
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (metric, help, get) in [
            ("wharf_proxy_upstream_errors_total", "Failed attempts to reach an upstream.", 0),
            ("wharf_proxy_retries_total", "Requests retried on another instance.", 1),
            ("wharf_proxy_ejections_total", "Instances passively ejected after consecutive failures.", 2),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (svc, s) in &services {
                let v = match get {
                    0 => s.upstream_errors.load(Ordering::Relaxed),
                    1 => s.retries.load(Ordering::Relaxed),
                    _ => s.ejections.load(Ordering::Relaxed),
                };
                let _ = writeln!(out, "{metric}{{service=\"{}\"}} {v}", escape(svc));
            }
        }
        out.push_str("# HELP wharf_proxy_pool_size Healthy instances in each service's pool.\n");
        out.push_str("# TYPE wharf_proxy_pool_size gauge\n");
        for (svc, n) in self.pool_sizes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "wharf_proxy_pool_size{{service=\"{}\"}} {n}", escape(svc));
        }
        out.push_str("# HELP wharf_proxy_route_table_rebuilds_total Route tables built from the catalog.\n");
        out.push_str("# TYPE wharf_proxy_route_table_rebuilds_total counter\n");
        let _ = writeln!(out, "wharf_proxy_route_table_rebuilds_total {}", self.rebuilds.load(Ordering::Relaxed));
        out.push_str("# HELP wharf_proxy_route_table_rebuild_seconds Time to build a route table.\n");
        out.push_str("# TYPE wharf_proxy_route_table_rebuild_seconds histogram\n");
        self.rebuild_duration.render(out, "wharf_proxy_route_table_rebuild_seconds", "");
        out.push_str("# HELP wharf_proxy_header_timeouts_total Client connections closed for a request header slower than --proxy-header-timeout.\n");
        out.push_str("# TYPE wharf_proxy_header_timeouts_total counter\n");
        let _ = writeln!(out, "wharf_proxy_header_timeouts_total {}", self.header_timeouts.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = ProxyMetrics::default();
        let r = m.route_stats("web", "host:web.localhost");
        r.record(200, Duration::from_millis(3));
        r.record(503, Duration::from_millis(1));
        m.service_stats("web").retries.fetch_add(2, Ordering::Relaxed);
        m.set_pool_sizes(BTreeMap::from([("web".to_string(), 3)]));
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("wharf_proxy_requests_total{service=\"web\",route=\"host:web.localhost\",status=\"200\"} 1")
        );
        assert!(out.contains("wharf_proxy_retries_total{service=\"web\"} 2"));
        assert!(out.contains("wharf_proxy_pool_size{service=\"web\"} 3"));
        assert!(out.contains("le=\"+Inf\"} 2"));
    }
}
