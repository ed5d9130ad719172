//! `tomcat-status`: a health check on the thread pools of a Tomcat server, read from the XML
//! form of its manager status page (`/manager/status?XML=true`, role `manager-status`).
//!
//! For every connector's `<threadInfo maxThreads=".." currentThreadsBusy=".."/>` it computes the
//! busy percentage and judges the worst one: at or above the critical threshold (default 95%) the
//! check is critical, at or above the warning threshold (default 80%) it warns, else it passes.
//! A non-2xx response, or a page without any `<threadInfo>`, is critical.
//!
//! Config (the check's `Wasm.Config`), all optional:
//!
//! * `key=value` pairs separated by commas or spaces: `warn=80, critical=95,
//!   connector=http-nio-8080, path=/manager/status?XML=true`;
//! * or JSON: `{"path": "...", "warn_percent": 80, "critical_percent": 95, "connector":
//!   "http-nio-8080", "user": "monitor", "password": "..."}` (`user`/`password` send HTTP basic
//!   authentication).

use serde::Deserialize;
use wharf_plugin_sdk::{CheckResult, HealthCheck, Instance, http};

#[derive(Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    path: String,
    warn_percent: u32,
    critical_percent: u32,
    /// Only judge this connector (its name without quotes, e.g. `http-nio-8080`).
    connector: Option<String>,
    user: Option<String>,
    password: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: "/manager/status?XML=true".to_owned(),
            warn_percent: 80,
            critical_percent: 95,
            connector: None,
            user: None,
            password: None,
        }
    }
}

fn parse_percent(key: &str, value: &str) -> Result<u32, String> {
    value
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("invalid config: {key}={value:?} is not a whole percentage"))
}

fn parse_config(text: &str) -> Result<Config, String> {
    let text = text.trim();
    let config = if text.starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("invalid JSON config: {e}"))?
    } else {
        let mut config = Config::default();
        for pair in text.split(|c: char| c == ',' || c == ';' || c.is_whitespace()).filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(format!("invalid config: {pair:?} is not key=value"));
            };
            match key {
                "warn" | "warn_percent" => config.warn_percent = parse_percent(key, value)?,
                "critical" | "critical_percent" => config.critical_percent = parse_percent(key, value)?,
                "connector" => config.connector = Some(value.to_owned()),
                "path" => config.path = value.to_owned(),
                "user" => config.user = Some(value.to_owned()),
                "password" => config.password = Some(value.to_owned()),
                _ => {
                    return Err(format!(
                        "invalid config: unknown key {key:?} (expected warn, critical, connector, path, user, password)"
                    ));
                }
            }
        }
        config
    };
    if !config.path.starts_with('/') {
        return Err(format!("invalid config: path must start with '/', got {:?}", config.path));
    }
    if config.warn_percent > config.critical_percent || config.critical_percent > 100 {
        return Err(format!(
            "invalid config: thresholds must satisfy warn <= critical <= 100, got warn={} critical={}",
            config.warn_percent, config.critical_percent
        ));
    }
    Ok(config)
}

/// Standard base64 (with padding), for the basic authentication header.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let bytes = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Replaces the five predefined XML entities.
fn unescape(value: &str) -> String {
    value.replace("&quot;", "\"").replace("&apos;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// A start (or empty-element) tag: its name and attributes, values unescaped.
struct Tag<'a> {
    name: &'a str,
    attributes: Vec<(&'a str, String)>,
}

impl Tag<'_> {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// What the tokenizer found at one `<`.
enum Token<'a> {
    Start(Tag<'a>),
    End(&'a str),
}

/// Parses the attributes of a tag, `rest` starting after its name. Tolerates both quote styles.
fn parse_attributes(mut rest: &str) -> Result<Vec<(&str, String)>, String> {
    let mut attributes = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() || rest.starts_with('/') {
            return Ok(attributes);
        }
        let Some((name, after)) = rest.split_once('=') else {
            return Err(format!("malformed attribute near {:?}", rest.chars().take(40).collect::<String>()));
        };
        let after = after.trim_start();
        let Some(quote) = after.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            return Err(format!("unquoted value for attribute {:?}", name.trim()));
        };
        let Some(end) = after[1..].find(quote) else {
            return Err(format!("unterminated value for attribute {:?}", name.trim()));
        };
        attributes.push((name.trim(), unescape(&after[1..1 + end])));
        rest = &after[end + 2..];
    }
}

/// Splits `xml` into start and end tags, skipping text, comments, declarations and CDATA.
fn tokenize(xml: &str) -> Result<Vec<Token<'_>>, String> {
    let mut tokens = Vec::new();
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        rest = &rest[open..];
        let (skip_to, skip_len) = if rest.starts_with("<!--") {
            ("-->", 3)
        } else if rest.starts_with("<![CDATA[") {
            ("]]>", 3)
        } else {
            (">", 1)
        };
        let Some(close) = rest.find(skip_to) else {
            return Err("unterminated tag".to_owned());
        };
        let inner = &rest[1..close];
        rest = &rest[close + skip_len..];
        if skip_len == 3 || inner.starts_with('?') || inner.starts_with('!') {
            continue;
        }
        if let Some(name) = inner.strip_prefix('/') {
            tokens.push(Token::End(name.trim()));
            continue;
        }
        let name_end = inner.find(|c: char| c.is_whitespace() || c == '/').unwrap_or(inner.len());
        let (name, attributes) = inner.split_at(name_end);
        let attributes = parse_attributes(attributes).map_err(|e| format!("in <{name}>: {e}"))?;
        let self_closing = inner.ends_with('/');
        tokens.push(Token::Start(Tag { name, attributes }));
        if self_closing {
            tokens.push(Token::End(name));
        }
    }
    Ok(tokens)
}

/// One connector's thread pool.
#[derive(Debug, PartialEq)]
struct Pool {
    connector: String,
    max: u64,
    busy: u64,
}

impl Pool {
    /// The busy percentage, rounded down.
    fn percent(&self) -> u64 {
        self.busy * 100 / self.max
    }

    fn at_least(&self, percent: u32) -> bool {
        self.busy * 100 >= u64::from(percent) * self.max
    }

    fn describe(&self) -> String {
        format!("{}: {}/{} threads busy ({}%)", self.connector, self.busy, self.max, self.percent())
    }
}

fn number(tag: &Tag, name: &str) -> Result<i64, String> {
    let value = tag.attribute(name).ok_or_else(|| format!("<threadInfo> has no {name} attribute"))?;
    value.trim().parse().map_err(|_| format!("<threadInfo> {name}={value:?} is not a number"))
}

/// Extracts the thread pools of the status page. Connectors without a thread limit
/// (`maxThreads` <= 0) are left out.
fn thread_pools(xml: &str) -> Result<Vec<Pool>, String> {
    let mut pools = Vec::new();
    let mut connector: Option<String> = None;
    let mut seen = 0;
    for token in tokenize(xml)? {
        match token {
            Token::Start(tag) if tag.name == "connector" => {
                // Tomcat writes the name quoted: name='"http-nio-8080"'.
                connector = tag.attribute("name").map(|name| name.trim_matches('"').to_owned());
            }
            Token::End("connector") => connector = None,
            Token::Start(tag) if tag.name == "threadInfo" => {
                seen += 1;
                let max = number(&tag, "maxThreads")?;
                let busy = number(&tag, "currentThreadsBusy")?;
                let name = connector.clone().unwrap_or_else(|| format!("connector #{seen}"));
                if let (Ok(max @ 1..), Ok(busy)) = (u64::try_from(max), u64::try_from(busy)) {
                    pools.push(Pool { connector: name, max, busy });
                }
            }
            _ => {}
        }
    }
    if seen == 0 {
        return Err("no <threadInfo> element in the status page (is the path the XML form, ?XML=true?)".to_owned());
    }
    Ok(pools)
}

/// Judges the pools against the thresholds of `config`.
fn evaluate(pools: Vec<Pool>, config: &Config) -> CheckResult {
    let all: Vec<String> = pools.iter().map(|p| p.connector.clone()).collect();
    let pools: Vec<Pool> = match &config.connector {
        Some(wanted) => pools.into_iter().filter(|p| &p.connector == wanted).collect(),
        None => pools,
    };
    let count = pools.len();
    // The worst pool has the highest busy/max ratio: compare by cross-multiplication.
    let Some(worst) = pools.into_iter().max_by(|a, b| (a.busy * b.max).cmp(&(b.busy * a.max))) else {
        return match &config.connector {
            Some(wanted) => {
                CheckResult::critical(format!("connector {wanted:?} not found (connectors: {})", all.join(", ")))
            }
            None => CheckResult::warning("no connector with a thread limit (maxThreads > 0)"),
        };
    };
    let mut output = worst.describe();
    let status = if worst.at_least(config.critical_percent) {
        output.push_str(&format!(", above the critical threshold {}%", config.critical_percent));
        CheckResult::critical
    } else if worst.at_least(config.warn_percent) {
        output.push_str(&format!(", above the warning threshold {}%", config.warn_percent));
        CheckResult::warning
    } else {
        CheckResult::passing
    };
    if count > 1 {
        output.push_str(&format!(" (busiest of {count} connectors)"));
    }
    status(output)
}

struct TomcatStatus;

impl HealthCheck for TomcatStatus {
    fn check(target: Instance, config: String) -> Result<CheckResult, String> {
        let config = parse_config(&config)?;
        let url = target.url(&config.path);
        let authorization = match (&config.user, &config.password) {
            (Some(user), password) => {
                let credentials = format!("{user}:{}", password.as_deref().unwrap_or(""));
                Some(format!("Basic {}", base64(credentials.as_bytes())))
            }
            (None, Some(_)) => return Err("invalid config: \"password\" needs \"user\"".to_owned()),
            (None, None) => None,
        };
        let mut headers = vec![("Accept", "application/xml, text/xml")];
        if let Some(authorization) = &authorization {
            headers.push(("Authorization", authorization));
        }
        let response = match http::request("GET", &url, &headers, &[]) {
            Ok(response) => response,
            Err(e) => return Ok(CheckResult::critical(format!("GET {url}: {e}"))),
        };
        if !response.is_success() {
            let hint = match response.status {
                401 | 403 => " (the manager status page needs a user with the manager-status role)",
                _ => "",
            };
            return Ok(CheckResult::critical(format!("GET {url}: {}{hint}", response.status)));
        }
        match thread_pools(&response.text()) {
            Ok(pools) => Ok(evaluate(pools, &config)),
            Err(e) => Ok(CheckResult::critical(format!("GET {url}: {e}"))),
        }
    }
}

wharf_plugin_sdk::export_health_check!(TomcatStatus);

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_plugin_sdk::Status;

    const PAGE: &str = r#"<?xml version="1.0" encoding="utf-8"?><?xml-stylesheet type="text/xsl" href="/manager/xform.xsl" ?>
<status><jvm><memory free='21516784' total='62914560' max='1006632960'/><memorypool name='G1 Eden Space' type='Heap memory' usageInit='0' usageCommitted='0' usageMax='-1' usageUsed='0'/></jvm>
<connector name='"http-nio-8080"'><threadInfo  maxThreads="200" currentThreadCount="10" currentThreadsBusy="170" /><requestInfo  maxTime="302" processingTime="2015" requestCount="74" errorCount="3" bytesReceived="0" bytesSent="394855" /><workers><worker  stage="S" requestProcessingTime="1" requestBytesSent="0" requestBytesReceived="0" remoteAddr="127.0.0.1" virtualHost="localhost" method="GET" currentUri="/manager/status" currentQueryString="XML=true" protocol="HTTP/1.1" /></workers></connector>
<connector name='&quot;ajp-nio-8009&quot;'><threadInfo maxThreads='100' currentThreadCount='2' currentThreadsBusy='1'/><requestInfo/></connector>
</status>"#;

    #[test]
    fn parses_thread_pools() {
        let pools = thread_pools(PAGE).expect("parses");
        assert_eq!(
            pools,
            vec![
                Pool { connector: "http-nio-8080".to_owned(), max: 200, busy: 170 },
                Pool { connector: "ajp-nio-8009".to_owned(), max: 100, busy: 1 },
            ]
        );
        assert!(
            thread_pools("<html><body>Manager</body></html>")
                .expect_err("must be rejected")
                .contains("no <threadInfo>")
        );
        assert!(thread_pools(r#"<threadInfo maxThreads="x" currentThreadsBusy="1"/>"#).is_err());
        assert!(thread_pools(r#"<threadInfo maxThreads="2"#).is_err());
        let unlimited = thread_pools(r#"<connector name="c"><threadInfo maxThreads="-1" currentThreadsBusy="1"/>"#);
        assert_eq!(unlimited, Ok(vec![]));
    }

    #[test]
    fn judges_the_worst_pool() {
        let config = Config::default();
        let result = evaluate(thread_pools(PAGE).expect("parses"), &config);
        assert_eq!(result.status, Status::Warning);
        assert_eq!(
            result.output,
            "http-nio-8080: 170/200 threads busy (85%), above the warning threshold 80% (busiest of 2 connectors)"
        );
        let ajp = Config { connector: Some("ajp-nio-8009".to_owned()), ..Config::default() };
        let result = evaluate(thread_pools(PAGE).expect("parses"), &ajp);
        assert_eq!(result.status, Status::Passing);
        assert_eq!(result.output, "ajp-nio-8009: 1/100 threads busy (1%)");
        let missing = Config { connector: Some("https".to_owned()), ..Config::default() };
        assert_eq!(evaluate(thread_pools(PAGE).expect("parses"), &missing).status, Status::Critical);
        let pool = |busy| vec![Pool { connector: "c".to_owned(), max: 200, busy }];
        assert_eq!(evaluate(pool(190), &config).status, Status::Critical);
        assert_eq!(evaluate(pool(159), &config).status, Status::Passing);
        assert_eq!(evaluate(pool(160), &config).status, Status::Warning);
    }

    #[test]
    fn parses_config() {
        assert_eq!(parse_config(""), Ok(Config::default()));
        let config = parse_config("warn=70, critical=90% connector=http-nio-8080").expect("valid");
        assert_eq!((config.warn_percent, config.critical_percent), (70, 90));
        assert_eq!(config.connector.as_deref(), Some("http-nio-8080"));
        let config = parse_config(r#"{"path": "/status?XML=true", "warn_percent": 50, "user": "u"}"#).expect("valid");
        assert_eq!(
            (config.path.as_str(), config.warn_percent, config.user.as_deref()),
            ("/status?XML=true", 50, Some("u"))
        );
        assert!(parse_config("warn=high").expect_err("must be rejected").contains("warn=\"high\""));
        assert!(parse_config("warn=96").is_err());
        assert!(parse_config("level=3").expect_err("must be rejected").contains("unknown key"));
        assert!(parse_config(r#"{"warn": 1}"#).expect_err("must be rejected").contains("unknown field"));
        assert!(parse_config("path=status").is_err());
    }

    #[test]
    fn encodes_base64() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"tomcat:s3cret"), "dG9tY2F0OnMzY3JldA==");
    }
}
