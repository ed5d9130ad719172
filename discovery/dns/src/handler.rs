//! The hickory [`RequestHandler`] of wharf's DNS: reads the header and EDNS, sends names in
//! the served domains to [`records`](super::records), shuffles the answer, applies the
//! A-record limit, trims a UDP answer that does not fit the client's buffer (with TC set, so
//! the client retries over TCP), and forwards other names to the recursors.
//!
//! Everything but recursion is the pure [`plan`], which [`answer_bytes`] (the fuzz target's
//! entry) runs exactly as the server does.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use futures::StreamExt;
use hickory_net::client::Client;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::{DnsHandle, Protocol};
use hickory_proto::op::{
    DnsRequestOptions, DnsResponse, Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecoder, BinEncoder};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use rand::Rng;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use tokio::sync::{OnceCell, Semaphore};

use super::DnsConfig;
use super::records::{self, Lookup, NameIndex};
use catalog::Catalog;
use catalog::state::CatalogState;

/// The largest UDP answer sent, whatever a client's EDNS buffer says (BIND and NSD cap
/// theirs lower still); larger answers go over TCP.
pub const MAX_UDP_PAYLOAD: u16 = 4096;
/// Forwarded queries in flight at once; more are answered SERVFAIL at once, so a flood of
/// outside names cannot pile up waiting on the recursors.
const MAX_RECURSIONS: usize = 256;

/// One response, before encoding.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub(crate) meta: Metadata,
    pub(crate) edns: Option<Edns>,
    pub(crate) answers: Vec<Record>,
    pub(crate) authorities: Vec<Record>,
    pub(crate) additionals: Vec<Record>,
    /// Whether the question section is echoed (not for a question that cannot be).
    pub(crate) echo_question: bool,
}

impl Reply {
    fn empty(meta: Metadata, edns: Option<Edns>) -> Reply {
        Reply { meta, edns, answers: Vec::new(), authorities: Vec::new(), additionals: Vec::new(), echo_question: true }
    }

    /// The question section to send: the request's own bytes, or `none`.
    fn question<'q>(&self, request: &'q Request, none: &'q Option<Queries>) -> &'q Queries {
        match (self.echo_question, none) {
            (false, Some(none)) => none,
            _ => &request.queries,
        }
    }

    fn error(mut meta: Metadata, edns: Option<Edns>, code: ResponseCode) -> Reply {
        meta.response_code = code;
        Reply::empty(meta, edns)
    }
}

/// What to do with one request.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Send this.
    Send(Reply),
    /// Ask the recursors; answer with the header and EDNS of `reply` (SERVFAIL if they all
    /// fail).
    Recurse { query: Query, reply: Reply },
}

/// Decides the response to `request` from one catalog state. Pure apart from `rng`, which
/// shuffles the answers.
pub(crate) fn plan<R: Rng + ?Sized>(
    state: &CatalogState,
    names: &NameIndex,
    config: &DnsConfig,
    request: &Request,
    rng: &mut R,
) -> Plan {
    let mut planned = plan_one(state, names, config, request, rng);
    // Only a single question is echoed: thousands of them (qdcount is 16 bits) would not fit
    // the answer, and hickory would turn that into a bare SERVFAIL.
    if let Plan::Send(reply) = &mut planned
        && request.queries.len() != 1
    {
        reply.echo_question = false;
    }
    planned
}

fn plan_one<R: Rng + ?Sized>(
    state: &CatalogState,
    names: &NameIndex,
    config: &DnsConfig,
    request: &Request,
    rng: &mut R,
) -> Plan {
    let mut meta = Metadata::response_from_request(&request.metadata);
    meta.recursion_available = !config.recursors.is_empty();
    // The response's EDNS carries the size hickory encodes UDP answers to.
    let edns = request.edns.as_ref().map(|e| {
        let mut ours = Edns::new();
        ours.set_max_payload(e.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        ours.set_version(0);
        ours
    });
    if question_points_into_header(request.queries.as_bytes(), request.queries.len()) {
        // hickory echoes the question's raw bytes, which would then point at the response's
        // own (different) header: answer FORMERR without the question instead.
        let mut reply = Reply::error(meta, edns, ResponseCode::FormErr);
        reply.echo_question = false;
        return Plan::Send(reply);
    }
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return Plan::Send(Reply::error(meta, edns, ResponseCode::BADVERS));
    }
    if request.metadata.op_code != OpCode::Query {
        return Plan::Send(Reply::error(meta, edns, ResponseCode::NotImp));
    }
    let Ok(info) = request.request_info() else {
        // Not exactly one question.
        return Plan::Send(Reply::error(meta, edns, ResponseCode::FormErr));
    };
    let query = info.query;
    let qtype = query.query_type();
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        return Plan::Send(Reply::error(meta, edns, ResponseCode::Refused));
    }
    let (domain, parsed) = match records::parse(query.name(), config) {
        Lookup::Outside if config.recursors.is_empty() => {
            return Plan::Send(Reply::error(meta, edns, ResponseCode::Refused));
        }
        Lookup::Outside => {
            return Plan::Recurse { query: query.original().clone(), reply: Reply::empty(meta, edns) };
        }
        Lookup::Inside { domain, query } => (domain, query),
    };
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return Plan::Send(Reply::error(meta, edns, ResponseCode::Refused));
    }
    let answer = records::answer(state, names, config, query.original().name(), qtype, domain, parsed.as_ref());
    meta.authoritative = true;
    meta.response_code = answer.rcode;
    let mut reply = Reply {
        meta,
        edns,
        answers: answer.answers,
        authorities: answer.authorities,
        additionals: answer.additionals,
        echo_question: true,
    };
    reply.answers.shuffle(rng);
    if config.a_record_limit > 0 && matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
        let mut kept = 0;
        reply.answers.retain(|r| {
            let address = matches!(r.record_type(), RecordType::A | RecordType::AAAA);
            kept += usize::from(address);
            !address || kept <= config.a_record_limit
        });
    }
    if request.protocol().is_datagram() {
        let limit = reply.edns.as_ref().map(|e| e.max_payload()).unwrap_or(512);
        if fit(&mut reply, &request.queries, usize::from(limit)) {
            reply.meta.truncation = true;
        }
    }
    Plan::Send(reply)
}

/// An empty question section.
fn no_question() -> Option<Queries> {
    Queries::read(&mut BinDecoder::new(&[]), 0).ok()
}

/// Whether a name in the raw question section (`count` questions, already decoded once by
/// hickory) uses a compression pointer into the 12-byte header. Malformed input counts as yes.
fn question_points_into_header(raw: &[u8], count: usize) -> bool {
    let mut i = 0;
    for _ in 0..count {
        loop {
            let Some(&len) = raw.get(i) else { return true };
            match len & 0xc0 {
                0x00 if len == 0 => {
                    i += 1;
                    break;
                }
                0x00 => i += 1 + usize::from(len),
                0xc0 => {
                    let Some(&low) = raw.get(i + 1) else { return true };
                    if (usize::from(len & 0x3f) << 8 | usize::from(low)) < 12 {
                        return true;
                    }
                    i += 2;
                    break;
                }
                _ => return true,
            }
        }
        i += 4;
    }
    false
}

/// Bytes a name takes on the wire, uncompressed.
fn name_len(name: &Name) -> usize {
    name.iter().map(|l| l.len() + 1).sum::<usize>() + 1
}

/// An upper bound of a record's size on the wire (compression only makes it smaller).
fn record_len(r: &Record) -> usize {
    let rdata = match &r.data {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::SRV(s) => 6 + name_len(&s.target),
        RData::CNAME(c) => name_len(&c.0),
        RData::TXT(t) => t.txt_data.iter().map(|s| s.len() + 1).sum(),
        RData::SOA(s) => name_len(&s.mname) + name_len(&s.rname) + 20,
        _ => usize::from(u16::MAX),
    };
    name_len(&r.name) + 10 + rdata
}

/// The names an answer record points at: additional records owned by one of them belong
/// to it.
fn refers_to(answer: &Record, extra: &Record) -> bool {
    match &answer.data {
        RData::SRV(s) => s.target == extra.name,
        RData::CNAME(c) => c.0 == extra.name,
        _ => answer.name == extra.name,
    }
}

/// Encoded size of `reply` keeping its first `n` answers and their additional records.
fn encoded_len(reply: &Reply, queries: &Queries, n: usize) -> usize {
    let answers = &reply.answers[..n];
    let additionals: Vec<&Record> =
        reply.additionals.iter().filter(|x| answers.iter().any(|a| refers_to(a, x))).collect();
    let response = MessageResponseBuilder::new(queries, reply.edns.as_ref()).build(
        reply.meta,
        answers.iter(),
        reply.authorities.iter(),
        std::iter::empty(),
        additionals,
    );
    let mut buf = Vec::with_capacity(1024);
    let mut encoder = BinEncoder::new(&mut buf);
    match response.destructive_emit(&mut encoder) {
        Ok(_) => buf.len(),
        Err(_) => usize::MAX,
    }
}

/// Trims `reply` to `limit` bytes the way Consul does: whole answers from the end, each
/// with the additional records that resolve it. Returns whether anything was cut.
fn fit(reply: &mut Reply, queries: &Queries, limit: usize) -> bool {
    let opt = if reply.edns.is_some() { 11 } else { 0 };
    let bound = 12
        + queries.as_bytes().len()
        + opt
        + reply.answers.iter().chain(&reply.authorities).chain(&reply.additionals).map(record_len).sum::<usize>();
    if bound <= limit {
        return false;
    }
    let all = reply.answers.len();
    if encoded_len(reply, queries, all) <= limit {
        return false;
    }
    // The largest number of answers that fits: binary search over the prefix length.
    let (mut lo, mut hi) = (0, all);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if encoded_len(reply, queries, mid) <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    reply.answers.truncate(lo);
    let answers = &reply.answers;
    reply.additionals.retain(|x| answers.iter().any(|a| refers_to(a, x)));
    true
}

/// Encodes a reply as the server does on `protocol`.
fn encode(reply: &Reply, request: &Request, protocol: Protocol) -> Result<Vec<u8>, String> {
    let none = no_question();
    let response = MessageResponseBuilder::new(reply.question(request, &none), reply.edns.as_ref()).build(
        reply.meta,
        reply.answers.iter(),
        reply.authorities.iter(),
        std::iter::empty(),
        reply.additionals.iter(),
    );
    let mut buf = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_max_size(match protocol {
        Protocol::Udp => reply.edns.as_ref().map(|e| e.max_payload()).unwrap_or(512),
        _ => u16::MAX,
    });
    response.destructive_emit(&mut encoder).map_err(|e| format!("encoding the response: {e}"))?;
    Ok(buf)
}

/// Answers raw query bytes from `state` as the server would over UDP (or TCP), without
/// sockets or recursion (a name that would be forwarded gets SERVFAIL). `Ok(None)` when the
/// server would send nothing back (not a decodable query). For fuzzing and tests.
pub fn answer_bytes(
    state: &CatalogState,
    config: &DnsConfig,
    raw: &[u8],
    tcp: bool,
) -> Result<Option<Vec<u8>>, String> {
    let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
    let Ok(request) = Request::from_bytes(raw.to_vec(), SocketAddr::from(([127, 0, 0, 1], 53535)), protocol) else {
        return Ok(None);
    };
    if request.metadata.message_type == MessageType::Response {
        return Ok(None);
    }
    let names = NameIndex::build(state);
    let mut rng = rand::rngs::StdRng::seed_from_u64(raw.len() as u64);
    let reply = match plan(state, &names, config, &request, &mut rng) {
        Plan::Send(reply) => reply,
        Plan::Recurse { reply, .. } => Reply::error(reply.meta, reply.edns, ResponseCode::ServFail),
    };
    encode(&reply, &request, protocol).map(Some)
}

/// A catalog state with its name index, built once per state.
struct Indexed {
    state: Arc<CatalogState>,
    names: NameIndex,
}

/// An upstream DNS server for names outside the domain.
struct Upstream {
    addr: SocketAddr,
    udp: Client<TokioRuntimeProvider>,
}

/// wharf's DNS request handler.
pub struct ConsulDns {
    catalog: Catalog,
    config: Arc<DnsConfig>,
    indexed: ArcSwapOption<Indexed>,
    upstreams: OnceCell<Vec<Upstream>>,
    recursions: Semaphore,
}

impl ConsulDns {
    pub fn new(config: DnsConfig, catalog: Catalog) -> ConsulDns {
        ConsulDns {
            catalog,
            config: Arc::new(config),
            indexed: ArcSwapOption::empty(),
            upstreams: OnceCell::new(),
            recursions: Semaphore::new(MAX_RECURSIONS),
        }
    }

    /// The current catalog state and its name index (rebuilt when the state changed).
    fn current(&self) -> Arc<Indexed> {
        let state = self.catalog.snapshot();
        if let Some(cached) = self.indexed.load_full()
            && Arc::ptr_eq(&cached.state, &state)
        {
            return cached;
        }
        let names = NameIndex::build(&state);
        let fresh = Arc::new(Indexed { state, names });
        self.indexed.store(Some(fresh.clone()));
        fresh
    }

    /// UDP clients of the recursors, made on first use (they need the runtime).
    async fn upstreams(&self) -> &[Upstream] {
        self.upstreams
            .get_or_init(|| async {
                self.config
                    .recursors
                    .iter()
                    .map(|&addr| {
                        let stream = UdpClientStream::builder(addr, TokioRuntimeProvider::default())
                            .with_timeout(Some(self.config.recursor_timeout))
                            .build();
                        let (udp, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
                        tokio::spawn(background);
                        Upstream { addr, udp }
                    })
                    .collect()
            })
            .await
    }

    /// Asks the recursors in order; the first answer that is not SERVFAIL wins. A truncated
    /// UDP answer is asked again over TCP.
    async fn recurse(&self, query: &Query, recursion_desired: bool) -> Option<DnsResponse> {
        let mut options = DnsRequestOptions::default();
        options.recursion_desired = recursion_desired;
        options.use_edns = true;
        options.edns_payload_len = MAX_UDP_PAYLOAD;
        let timeout = self.config.recursor_timeout;
        for upstream in self.upstreams().await {
            let udp = tokio::time::timeout(timeout, upstream.udp.lookup(query.clone(), options).next()).await;
            let mut response = match udp {
                Ok(Some(Ok(r))) => r,
                Ok(Some(Err(e))) => {
                    tracing::debug!(recursor = %upstream.addr, "recursor failed: {e}");
                    continue;
                }
                Ok(None) | Err(_) => {
                    tracing::debug!(recursor = %upstream.addr, "recursor did not answer in {timeout:?}");
                    continue;
                }
            };
            if response.metadata.truncation {
                match self.over_tcp(upstream.addr, query, options).await {
                    Some(full) => response = full,
                    None => {
                        tracing::debug!(recursor = %upstream.addr, "TCP retry failed; relaying the truncated answer")
                    }
                }
            }
            if response.metadata.response_code == ResponseCode::ServFail {
                continue;
            }
            return Some(response);
        }
        None
    }

    async fn over_tcp(&self, addr: SocketAddr, query: &Query, options: DnsRequestOptions) -> Option<DnsResponse> {
        let timeout = self.config.recursor_timeout;
        // The provider owns the connection's background task: it must outlive the lookup.
        let provider = TokioRuntimeProvider::default();
        let exchange = TcpClientStream::exchange(addr, None, timeout, None, provider.clone());
        let exchange = tokio::time::timeout(timeout, exchange).await.ok()?.ok()?;
        let response = tokio::time::timeout(timeout, exchange.lookup(query.clone(), options).next()).await;
        drop(provider);
        response.ok()??.ok()
    }
}

async fn send<R: ResponseHandler>(request: &Request, reply: &Reply, mut handle: R) -> ResponseInfo {
    let none = no_question();
    let response = MessageResponseBuilder::new(reply.question(request, &none), reply.edns.as_ref()).build(
        reply.meta,
        reply.answers.iter(),
        reply.authorities.iter(),
        std::iter::empty(),
        reply.additionals.iter(),
    );
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(src = %request.src(), "cannot send a DNS response: {e}");
            ResponseInfo::from(Header { metadata: reply.meta, counts: HeaderCounts::default() })
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for ConsulDns {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, handle: R) -> ResponseInfo {
        let current = self.current();
        let planned = plan(&current.state, &current.names, &self.config, request, &mut rand::rng());
        drop(current);
        match planned {
            Plan::Send(reply) => send(request, &reply, handle).await,
            Plan::Recurse { query, mut reply } => {
                let Ok(_slot) = self.recursions.try_acquire() else {
                    tracing::warn!("{MAX_RECURSIONS} forwarded queries already in flight; answering SERVFAIL");
                    reply.meta.response_code = ResponseCode::ServFail;
                    return send(request, &reply, handle).await;
                };
                match self.recurse(&query, request.metadata.recursion_desired).await {
                    Some(upstream) => {
                        let upstream = upstream.into_message();
                        reply.meta.response_code = upstream.metadata.response_code;
                        reply.meta.truncation = upstream.metadata.truncation;
                        reply.answers = upstream.answers;
                        reply.authorities = upstream.authorities;
                        reply.additionals = upstream.additionals;
                    }
                    None => reply.meta.response_code = ResponseCode::ServFail,
                }
                send(request, &reply, handle).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::Message;
    use hickory_proto::serialize::binary::BinDecodable;

    use super::*;
    use catalog::command::Command;
    use catalog::model::{Node, Service};

    fn state_with(instances: usize) -> CatalogState {
        let mut state = CatalogState::default();
        for i in 0..instances {
            let node = Node {
                node: format!("node-with-a-longish-name-{i:03}"),
                address: format!("10.0.{}.{}", i / 250, i % 250 + 1),
                ..Default::default()
            };
            let service =
                Service { id: format!("web-{i}"), service: "web".into(), port: 8000 + i as u16, ..Default::default() };
            let cmd = Command::Register {
                node,
                service: Some(service),
                checks: vec![],
                skip_node_update: false,
                replace_service_checks: false,
            };
            state.apply(i as u64 + 1, &cmd);
        }
        state
    }

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_str(name).expect("name"), qtype));
        m.metadata.recursion_desired = true;
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.edns = Some(e);
        }
        m.to_vec().expect("encode")
    }

    fn ask(state: &CatalogState, config: &DnsConfig, raw: &[u8], tcp: bool) -> (Message, usize) {
        let bytes = answer_bytes(state, config, raw, tcp).expect("encodes").expect("answered");
        (Message::from_bytes(&bytes).expect("decodes"), bytes.len())
    }

    #[test]
    fn large_udp_answers_are_trimmed_to_512_with_tc_and_synced_additionals() {
        let state = state_with(30);
        let config = DnsConfig::default();
        let (m, len) = ask(&state, &config, &query("web.service.consul.", RecordType::SRV, None), false);
        assert!(len <= 512, "{len}");
        assert!(m.metadata.truncation);
        assert!(!m.answers.is_empty() && m.answers.len() < 30);
        assert_eq!(m.additionals.len(), m.answers.len(), "each SRV keeps the A of its target");
        for srv in &m.answers {
            let RData::SRV(s) = &srv.data else { panic!("srv") };
            assert!(m.additionals.iter().any(|a| a.name == s.target), "{}", s.target);
        }
        let (full, _) = ask(&state, &config, &query("web.service.consul.", RecordType::SRV, None), true);
        assert!(!full.metadata.truncation);
        assert_eq!(full.answers.len(), 30);
        assert_eq!(full.additionals.len(), 30);
    }

    #[test]
    fn edns_buffers_are_honoured_up_to_the_cap() {
        let state = state_with(200);
        let config = DnsConfig::default();
        let (small, _) = ask(&state, &config, &query("web.service.consul.", RecordType::A, None), false);
        let (big, len) = ask(&state, &config, &query("web.service.consul.", RecordType::A, Some(4096)), false);
        assert!(big.answers.len() > small.answers.len());
        assert!(len <= 4096);
        let (huge, len) = ask(&state, &config, &query("web.service.consul.", RecordType::A, Some(65000)), false);
        assert!(len <= usize::from(MAX_UDP_PAYLOAD));
        assert!(huge.metadata.truncation);
        let (tiny, len) = ask(&state, &config, &query("web.service.consul.", RecordType::A, Some(100)), false);
        assert!(len <= 512 && tiny.edns.as_ref().map(|e| e.max_payload()) == Some(512));
    }

    #[test]
    fn a_record_limit_applies_on_udp_and_tcp_without_tc() {
        let state = state_with(10);
        let config = DnsConfig { a_record_limit: 3, ..DnsConfig::default() };
        for tcp in [false, true] {
            let (m, _) = ask(&state, &config, &query("web.service.consul.", RecordType::A, None), tcp);
            assert_eq!(m.answers.len(), 3);
            assert!(!m.metadata.truncation);
        }
        let (srv, _) = ask(&state, &config, &query("web.service.consul.", RecordType::SRV, Some(4096)), false);
        assert_eq!(srv.answers.len(), 10, "the limit is for address records only");
    }

    #[test]
    fn answers_are_shuffled() {
        let state = state_with(10);
        let config = DnsConfig::default();
        let names = NameIndex::build(&state);
        let raw = query("web.service.consul.", RecordType::A, None);
        let request = Request::from_bytes(raw, "127.0.0.1:5353".parse().expect("addr"), Protocol::Udp).expect("req");
        let mut orders = std::collections::HashSet::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20 {
            let Plan::Send(reply) = plan(&state, &names, &config, &request, &mut rng) else { panic!("send") };
            orders.insert(reply.answers.iter().map(|r| r.data.to_string()).collect::<Vec<_>>());
        }
        assert!(orders.len() > 1);
    }

    #[test]
    fn header_flags_and_error_codes() {
        let state = state_with(1);
        let config = DnsConfig::default();
        let (m, _) = ask(&state, &config, &query("web.service.consul.", RecordType::A, None), false);
        assert!(m.metadata.authoritative);
        assert!(!m.metadata.recursion_available);
        assert!(m.metadata.recursion_desired, "RD is copied");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);

        let (outside, _) = ask(&state, &config, &query("example.com.", RecordType::A, None), false);
        assert_eq!(outside.metadata.response_code, ResponseCode::Refused);

        let mut two = Message::query();
        two.add_query(Query::query(Name::from_str("a.service.consul.").expect("n"), RecordType::A));
        two.add_query(Query::query(Name::from_str("b.service.consul.").expect("n"), RecordType::A));
        let (m, _) = ask(&state, &config, &two.to_vec().expect("enc"), false);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

        let mut chaos = Message::query();
        let mut q = Query::query(Name::from_str("version.bind.").expect("n"), RecordType::TXT);
        q.set_query_class(DNSClass::CH);
        chaos.add_query(q);
        let (m, _) = ask(&state, &config, &chaos.to_vec().expect("enc"), false);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);

        let mut v1 = Message::query();
        v1.add_query(Query::query(Name::from_str("web.service.consul.").expect("n"), RecordType::A));
        let mut e = Edns::new();
        e.set_version(1);
        v1.edns = Some(e);
        let (m, _) = ask(&state, &config, &v1.to_vec().expect("enc"), false);
        // BADVERS and BADSIG share the code 16; a decoder shows it as BADSIG.
        assert_eq!(u16::from(m.metadata.response_code), u16::from(ResponseCode::BADVERS));
        assert!(m.edns.is_some(), "BADVERS needs the OPT record for its upper bits");

        let mut notify = Message::query();
        notify.metadata.op_code = OpCode::Notify;
        notify.add_query(Query::query(Name::from_str("consul.").expect("n"), RecordType::SOA));
        let (m, _) = ask(&state, &config, &notify.to_vec().expect("enc"), false);
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

        let (axfr, _) = ask(&state, &config, &query("consul.", RecordType::AXFR, None), true);
        assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn a_question_pointing_into_the_header_is_formerr_without_the_question() {
        // Found by the fuzzer: the name's pointer (0xc003) aims into the header.
        let raw = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'e', b'b', 0xc0, 0x03, 0, 1, 0, 1];
        if let Some(bytes) = answer_bytes(&state_with(1), &DnsConfig::default(), &raw, false).expect("encodes") {
            let m = Message::from_bytes(&bytes).expect("the answer decodes");
            assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
            assert!(m.queries.is_empty());
        }
        assert!(!question_points_into_header(&[3, b'w', b'e', b'b', 0, 0, 1, 0, 1], 1));
        assert!(question_points_into_header(&[3, b'w', b'e', b'b', 0xc0, 0x0b, 0, 1, 0, 1], 1));
        assert!(!question_points_into_header(&[1, b'a', 0, 0, 1, 0, 1, 1, b'b', 0xc0, 0x0c, 0, 1, 0, 1], 2));
    }

    #[test]
    fn many_questions_are_formerr_without_echoing_them() {
        // Found by the fuzzer: 8704 questions do not fit a 512-byte answer.
        let mut raw = vec![0x12, 0x34, 0x01, 0x00, 0x22, 0x00, 0, 0, 0, 0, 0, 0];
        for _ in 0..0x2200 {
            raw.extend_from_slice(&[0, 0, 1, 0, 1]);
        }
        let bytes = answer_bytes(&state_with(1), &DnsConfig::default(), &raw, false).expect("encodes").expect("answer");
        let m = Message::from_bytes(&bytes).expect("decodes");
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert!(m.queries.is_empty());
    }

    #[test]
    fn garbage_is_never_answered_with_a_panic() {
        let state = state_with(3);
        let config = DnsConfig::default();
        let seed = query("web.service.consul.", RecordType::SRV, Some(1232));
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..20_000 {
            let mut raw = seed.clone();
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..raw.len());
                raw[i] = rng.random();
            }
            if rng.random_bool(0.2) {
                raw.truncate(rng.random_range(0..raw.len()));
            }
            if let Some(bytes) = answer_bytes(&state, &config, &raw, false).expect("encodes") {
                assert!(bytes.len() <= usize::from(MAX_UDP_PAYLOAD));
                Message::from_bytes(&bytes).expect("every answer decodes");
            }
        }
    }
}
