//! Fuzz target for wharf's template engine: arbitrary UTF-8 is parsed as a consul-template
//! template and, when it parses, rendered against a small catalog (services with tags and
//! health, nodes, KV). A template is user input to `wharf template` and to the agent's
//! `--template`: whatever it says, parsing and rendering must return a result or an error,
//! never panic or overflow the stack.

#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use catalog::command::Command;
use catalog::model::{CheckStatus, HealthCheck, Node, Service};
use catalog::state::CatalogState;
use libfuzzer_sys::fuzz_target;
use templates::{CatalogData, RenderOptions, Template};

fn state() -> Arc<CatalogState> {
    static STATE: OnceLock<Arc<CatalogState>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let mut s = CatalogState::default();
            let mut idx = 1;
            let services =
                [("web-1", "web", "n1", &["urlprefix-/", "v1"][..]), ("web-2", "web", "n2", &["v2"]), ("db", "db", "n1", &[])];
            for (id, name, node, tags) in services {
                idx += 1;
                let check = HealthCheck {
                    check_id: format!("{id}-c"),
                    service_id: id.into(),
                    status: if id == "web-2" { CheckStatus::Critical } else { CheckStatus::Passing },
                    ..Default::default()
                };
                s.apply(
                    idx,
                    &Command::Register {
                        node: Node { node: node.into(), address: format!("10.0.0.{idx}"), ..Default::default() },
                        service: Some(Service {
                            id: id.into(),
                            service: name.into(),
                            port: 8000 + idx as u16,
                            tags: tags.iter().map(|t| t.to_string()).collect(),
                            meta: BTreeMap::from([("weight".to_string(), "2".to_string())]),
                            ..Default::default()
                        }),
                        checks: vec![check],
                        skip_node_update: false,
                        replace_service_checks: false,
                    },
                );
            }
            for (k, v) in [("app/config/port", "80"), ("app/config/name", "wharf"), ("app/flag", "true")] {
                idx += 1;
                s.apply(idx, &Command::KvSet { key: k.into(), value: v.as_bytes().to_vec(), flags: 0, cas: None });
            }
            Arc::new(s)
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let Ok(template) = Template::parse("fuzz", source) else { return };
    let opts = RenderOptions {
        now: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        env: Arc::new(|k: &str| (k == "HOME").then(|| "/root".to_string())),
        params: BTreeMap::new(),
    };
    let _ = template.render(Arc::new(CatalogData::new(state(), "n1", "dc1")), &opts);
});
