//! Fuzz target for wharf's DNS query handler: arbitrary bytes go through hickory's request
//! decoding (`Request::from_bytes`, what the server runs on every datagram) into the same
//! pure path the server answers with (`dns::answer_bytes`), against a catalog full
//! of awkward names, addresses, meta and health states.
//!
//! The first input byte picks the settings (4 variants) and UDP or TCP; the rest is the
//! packet. Besides "never panics" it checks what a client relies on: every decodable query
//! gets an answer that encodes, decodes, echoes the id and fits the UDP size.

#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use catalog::command::Command;
use dns::{DnsConfig, DnsOptions, answer_bytes};
use catalog::model::{CheckStatus, HealthCheck, Node, Service, Weights};
use catalog::state::CatalogState;
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    state: CatalogState,
    configs: Vec<DnsConfig>,
}

fn node(name: &str, address: &str, meta: &[(&str, &str)]) -> Node {
    Node {
        node: name.into(),
        address: address.into(),
        datacenter: "dc1".into(),
        meta: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let long = "x".repeat(600);
        let nodes = [
            node("Node-A", "10.0.0.1", &[("rack", "r1"), ("long", &long), ("rfc1035-empty", "")]),
            node("node-b", "fd00::2", &[]),
            node("weird_node.with.dots", "host.example.com", &[]),
            node(&"n".repeat(70), "10.0.0.4", &[]),
            node("nødé", "10.0.0.5", &[("ünï", "cödé")]),
            node("empty-address", "", &[]),
        ];
        let mut state = CatalogState::default();
        let mut index = 0;
        let mut apply = |state: &mut CatalogState, cmd: Command| {
            index += 1;
            state.apply(index, &cmd);
        };
        for n in &nodes {
            apply(
                &mut state,
                Command::Register {
                    node: n.clone(),
                    service: None,
                    checks: vec![],
                    skip_node_update: false,
                    replace_service_checks: false,
                },
            );
        }
        let statuses = [CheckStatus::Passing, CheckStatus::Warning, CheckStatus::Critical];
        for i in 0..40 {
            let n = &nodes[i % nodes.len()];
            let (name, address) = match i % 5 {
                0 => ("web", String::new()),
                1 => ("web", format!("10.1.{}.{}", i / 250, i % 250)),
                2 => ("Mixed-Case", format!("fd00::{i:x}")),
                3 => ("db", "db.example.com".to_string()),
                _ => ("web", "not an address!".to_string()),
            };
            let service = Service {
                id: format!("svc-{i}"),
                service: name.into(),
                address,
                port: 8000 + i as u16,
                tags: vec![format!("t{}", i % 3), "Shared".into()],
                weights: Weights { passing: (i as u32) * 5000, warning: (i % 2) as u32 },
                ..Default::default()
            };
            let check = HealthCheck {
                node: n.node.clone(),
                check_id: format!("c-{i}"),
                status: statuses[i % 3],
                service_id: service.id.clone(),
                service_name: name.into(),
                ..Default::default()
            };
            apply(
                &mut state,
                Command::Register {
                    node: n.clone(),
                    service: Some(service),
                    checks: vec![check],
                    skip_node_update: true,
                    replace_service_checks: false,
                },
            );
        }
        let variant = |o: DnsOptions| DnsConfig::new(&o).expect("fuzz settings are valid");
        let configs = vec![
            DnsConfig::default(),
            variant(DnsOptions { only_passing: true, a_record_limit: 2, ..DnsOptions::default() }),
            variant(DnsOptions {
                domain: "wharf.internal".into(),
                alt_domain: Some("consul".into()),
                node_ttl: "30s".into(),
                service_ttl: vec!["w*=5s".into(), "*=1s".into()],
                ..DnsOptions::default()
            }),
            variant(DnsOptions { recursors: vec!["127.0.0.1:1".into()], ..DnsOptions::default() }),
        ];
        Fixture { state, configs }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, packet)) = data.split_first() else { return };
    let f = fixture();
    let config = &f.configs[usize::from(selector & 3)];
    let tcp = selector & 4 != 0;
    let answer = answer_bytes(&f.state, config, packet, tcp).expect("every response encodes");
    let Some(bytes) = answer else { return };
    let response = Message::from_vec(&bytes).expect("every response decodes");
    assert_eq!(&bytes[..2], &packet[..2], "the id is echoed");
    if !tcp {
        assert!(bytes.len() <= 4096, "UDP answer of {} bytes", bytes.len());
        let plain_request = Message::from_vec(packet).map(|m| m.edns.is_none()).unwrap_or(false);
        if plain_request {
            assert!(bytes.len() <= 512, "UDP answer without EDNS of {} bytes", bytes.len());
        }
    }
    let _ = response;
});
