//! Test plugin `echo`: echoes its input, to test the host's plumbing.
//!
//! * Output (passing): `{service} {id} {address}:{port} tags=[t1,t2] meta={k1=v1,k2=v2} config={config}`,
//!   and one info log line `echo: checked {id}`.
//! * Config `sleep:MS`: busy-waits MS milliseconds on the host's monotonic clock, then passes with
//!   `slept MS ms` (a slow but finite plugin, for timeout tests).

use std::time::Duration;

use wharf_plugin_sdk::{CheckResult, HealthCheck, Instance, log, now};

fn describe(target: &Instance, config: &str) -> String {
    let meta: Vec<String> = target.meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{} {} {}:{} tags=[{}] meta={{{}}} config={config}",
        target.service,
        target.id,
        target.address,
        target.port,
        target.tags.join(","),
        meta.join(",")
    )
}

struct Echo;

impl HealthCheck for Echo {
    fn check(target: Instance, config: String) -> Result<CheckResult, String> {
        if let Some(ms) = config.strip_prefix("sleep:") {
            let ms: u64 = ms.parse().map_err(|_| format!("invalid config {config:?}: expected sleep:MILLISECONDS"))?;
            let until = now() + Duration::from_millis(ms);
            while now() < until {
                std::hint::spin_loop();
            }
            return Ok(CheckResult::passing(format!("slept {ms} ms")));
        }
        log::info(format!("echo: checked {}", target.id));
        Ok(CheckResult::passing(describe(&target, &config)))
    }
}

wharf_plugin_sdk::export_health_check!(Echo);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_instance() {
        let target = Instance {
            service: "web".to_owned(),
            id: "web-1".to_owned(),
            address: "127.0.0.1".to_owned(),
            port: 8080,
            tags: vec!["primary".to_owned(), "v1".to_owned()],
            meta: vec![("version".to_owned(), "1.2".to_owned()), ("zone".to_owned(), "a".to_owned())],
        };
        assert_eq!(
            describe(&target, "x y"),
            "web web-1 127.0.0.1:8080 tags=[primary,v1] meta={version=1.2,zone=a} config=x y"
        );
    }
}
