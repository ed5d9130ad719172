//! `wharf agent`: the catalog's Raft node, the Raft port, the HTTP API, DNS, the proxy, the
//! template renderer and the local registration sources (self-registration, health checks,
//! session timers, Docker, config dir), run as a set of services in one process.
//!
//! The way in: [`run`] reads the config files, [`AgentConfig::from_args`] validates
//! everything without side effects, [`AgentConfig::prepare`] does them (data dir, node ID,
//! keys, plugins), and `serve` starts the services, hands control to the [`Supervisor`]
//! (signals, reload, join, leave) and joins every service at shutdown.

mod args;
mod config;
mod local;
mod membership;
mod services;
mod supervise;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use catalog::model::AgentInfo;
use catalog::{Catalog, Cluster};
use consul_api::{ApiState, MetricsRenderer};
use dns::DnsServer;
use raft::node::RaftNode;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use args::AgentArgs;
pub(crate) use config::write_secret;
use config::{AgentConfig, Host, Prepared};
use services::{Service, Stop, task};
use supervise::{Exit, Supervisor};

/// Runs the agent: reads its config files, starts logging at `log_level` (the command
/// line's, else the files' `log_level`, else info), validates the settings and serves.
pub fn run(args: AgentArgs, log_level: Option<&str>) -> Result<()> {
    let files = local_agent::config_file::config_files(&args.config_file, &args.config_dir)?;
    let local = std::env::var("WHARF_LOCAL_CONFIG").or_else(|_| std::env::var("CONSUL_LOCAL_CONFIG")).ok();
    let file = local_agent::config_file::load(&files, local.as_deref())?;
    crate::init_logging(log_level.or(file.log_level.as_deref()).unwrap_or("info"));
    let host = Host::read();
    let mut args = args;
    let data_dir = config::data_dir(&args, &file, &host);
    args.retry_join.extend(crate::rejoin::take(&data_dir)?);
    let prepared = AgentConfig::from_args(&args, &file, &host)?.prepare()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wharf")
        .build()
        .context("cannot start the async runtime")?;
    let exit = runtime.block_on(serve(prepared))?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    if exit == Exit::Restart {
        return crate::rejoin::restart();
    }
    Ok(())
}

/// Serves until a signal, `leave` or a run-time join ends the agent.
async fn serve(p: Prepared) -> Result<Exit> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Bind every port first, so a busy port fails the start loudly.
    let raft_listener = bind(p.config.raft_bind, "Raft port").await?;
    let http_listener = bind(p.config.http_addr, "HTTP API").await?;
    let dns = p.config.dns.clone().map(DnsServer::bind).transpose()?;
    let (gossip, gossip_engine) = gossip::start(p.gossip.clone(), stop_rx.clone()).await?;
    let (node, catalog) = RaftNode::start(p.raft.clone()).await?;
    let cluster: Arc<dyn Cluster> = node.clone();
    let info = Arc::new(p.info.clone());
    let (control_tx, control_rx) = mpsc::channel(8);

    // The Raft port first (peers must reach this node while the rest starts) and last to stop.
    let raft = services::start(
        vec![raft_port(raft_listener, node.clone()), bootstrap(node.clone()), membership::engine(gossip_engine)],
        &stop_rx,
    );
    tracing::info!(gossip = %gossip.local_addr(), "gossip listening (UDP)");

    let mut metrics: Vec<MetricsRenderer> = Vec::new();
    let mut core = membership::services(
        &gossip,
        &node,
        &catalog,
        &cluster,
        p.config.reconnect_timeout,
        p.config.cleanup_dead_servers,
    );
    let certs = readers(&p, dns, &catalog, &info, &stop_rx, &mut metrics, &mut core)?;
    let sources = local::RegistrationSources::new(&p, &info, &cluster, &catalog);
    metrics.push(sources.metrics_renderer());
    let state = ApiState {
        catalog: catalog.clone(),
        cluster: cluster.clone(),
        agent: info.clone(),
        control: control_tx,
        metrics,
        local: sources.api_view(),
        applied: consul_api::session::AppliedClock::default(),
        members: Arc::new(membership::GossipMembers(gossip.clone())),
    };
    core.push(applied_clock(&state));
    core.push(http_api(http_listener, state));
    let mut running = services::start(core, &stop_rx);
    tracing::info!(
        node = %info.node_name, http = %info.http_addr, raft = %info.raft_addr, data_dir = %info.data_dir,
        "wharf agent started"
    );

    // The registration sources start once this agent's node is in the catalog.
    local::register_self(cluster.as_ref(), &info, stop_rx.clone()).await;
    running.extend(services::start(sources.services(), &stop_rx));
    let supervisor = Supervisor {
        node: node.clone(),
        gossip,
        cluster,
        info,
        join_key: p.join_key,
        check_policy: p.check_policy,
        certs,
        config: p.config,
    };
    if !supervisor.config.config.is_empty() {
        // Loaded outside the log macro: a disabled level must not skip the load.
        let summary = supervisor.reload().await.context("loading --config-dir")?;
        tracing::info!("{summary}");
    }
    let exit = supervisor.run(control_rx).await?;

    // Stop: every service but Raft, then the Raft node, then its port.
    let _ = stop_tx.send(true);
    running.join(Duration::from_secs(15)).await;
    node.shutdown().await;
    raft.join(Duration::from_secs(5)).await;
    Ok(exit)
}

/// The services that read the catalog for the outside world: DNS, the proxy, the agent's
/// templates (and the plugin host's metrics). Returns the proxy's reloadable certificates.
fn readers(
    p: &Prepared,
    dns: Option<DnsServer>,
    catalog: &Catalog,
    info: &AgentInfo,
    stop_rx: &Stop,
    metrics: &mut Vec<MetricsRenderer>,
    core: &mut Vec<Box<dyn Service>>,
) -> Result<Option<Arc<proxy::tls::CertStore>>> {
    if let Some(dns) = dns {
        tracing::info!(dns = ?dns.local_addr(), "DNS listening (UDP and TCP)");
        core.push(dns_service(dns, catalog.clone()));
    }
    if let Some(host) = p.plugin_host.clone() {
        tracing::info!(dir = %host.dir().display(), "Wasm plugins enabled");
        metrics.push(Arc::new(move |out: &mut String| host.metrics.render(out)));
    }
    let certs = match &p.config.proxy {
        Some(settings) => {
            let StartedProxy { service, certs, metrics: m } = proxy_service(settings, catalog, stop_rx)?;
            metrics.push(Arc::new(move |out: &mut String| m.render(out)));
            core.push(service);
            certs
        }
        None => None,
    };
    let templates = crate::template_cmd::in_agent(&p.config.templates, catalog, &info.node_name, &info.datacenter)?;
    core.extend(templates.map(|t| task("templates", move |stop| t.run(stop))));
    Ok(certs)
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for the {what}: is another agent running? choose another port")
    })
}

/// An axum server on `listener` until the stop signal, then a graceful shutdown.
fn axum_service(name: &'static str, listener: TcpListener, router: axum::Router) -> Box<dyn Service> {
    task(name, move |mut stop: Stop| async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .with_context(|| format!("the {name} server failed"))
    })
}

fn raft_port(listener: TcpListener, node: Arc<RaftNode>) -> Box<dyn Service> {
    axum_service("raft-port", listener, raft::server::router(node))
}

fn http_api(listener: TcpListener, state: ApiState) -> Box<dyn Service> {
    axum_service("http-api", listener, consul_api::router(state))
}

/// Bootstraps the cluster or joins it, retrying until it is done or the agent stops.
fn bootstrap(node: Arc<RaftNode>) -> Box<dyn Service> {
    task("bootstrap", move |mut stop: Stop| async move {
        tokio::select! {
            _ = node.bootstrap_or_join() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        Ok(())
    })
}

fn dns_service(dns: DnsServer, catalog: Catalog) -> Box<dyn Service> {
    task("dns", move |stop: Stop| async move { dns.run(catalog, stop).await.context("the DNS server stopped") })
}

/// Records when this agent applied each Raft index (KV lock delays).
fn applied_clock(state: &ApiState) -> Box<dyn Service> {
    let (clock, catalog) = (state.applied.clone(), state.catalog.clone());
    task("applied-clock", move |mut stop: Stop| async move {
        tokio::select! {
            _ = clock.run(catalog) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        Ok(())
    })
}

/// Starts Pingora's thread; the service waits for the stop signal, then for the thread.
/// Also returns the reloadable certificates (SIGHUP) and the proxy's metrics.
fn proxy_service(p: &proxy::ProxyConfig, catalog: &Catalog, stop: &Stop) -> Result<StartedProxy> {
    let handle = proxy::start(p.clone(), catalog.clone(), stop.clone())?;
    tracing::info!(listen = ?p.listen, threads = p.threads, "proxy listening");
    let (certs, metrics) = (handle.certs.clone(), handle.metrics.clone());
    let service = task("proxy", move |mut stop: Stop| async move {
        let _ = stop.wait_for(|s| *s).await;
        tokio::task::spawn_blocking(move || handle.join()).await.context("the proxy thread panicked")
    });
    Ok(StartedProxy { service, certs, metrics })
}

/// The running proxy as the agent holds it.
struct StartedProxy {
    service: Box<dyn Service>,
    /// The TLS certificates, reloaded on SIGHUP.
    certs: Option<Arc<proxy::tls::CertStore>>,
    metrics: Arc<proxy::ProxyMetrics>,
}
