//! consul-template's query strings: `[tag.]name[@dc][~near][|filter]` for `service`, and
//! `[name][@dc]` for `node`, `nodes` and `services`. Pure parsing, no lookups.

use std::sync::LazyLock;

use regex::Regex;

/// A parsed `service` query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceQuery {
    pub name: String,
    pub tag: Option<String>,
    pub dc: Option<String>,
    /// Statuses an instance may have to be listed; empty means any.
    pub statuses: Vec<String>,
}

// The same pieces as consul-template's `dependency.HealthServiceQuery` regular expression.
static SERVICE_RE: LazyLock<Result<Regex, regex::Error>> = LazyLock::new(|| {
    Regex::new(concat!(
        r"\A(?:(?P<tag>[\w=:.\-]+)\.)?",
        r"(?P<name>[\w\-]+)",
        r"(?:@(?P<dc>[\w.\-]+))?",
        r"(?:~(?P<near>[\w.\-]+))?",
        r"(?:\|(?P<filter>[\w,]+))?\z",
    ))
});

static NODE_RE: LazyLock<Result<Regex, regex::Error>> =
    LazyLock::new(|| Regex::new(r"\A(?P<name>[\w.\-]+)?(?:@(?P<dc>[\w.\-]+))?(?:~(?P<near>[\w.\-]+))?\z"));

const STATUSES: [&str; 4] = ["passing", "warning", "critical", "maintenance"];

fn compiled(re: &'static LazyLock<Result<Regex, regex::Error>>) -> Result<&'static Regex, String> {
    re.as_ref().map_err(|e| format!("internal error: query pattern does not compile: {e}"))
}

/// Parses a `service` query. Without a filter only passing instances are listed
/// (consul-template's "healthy only" default); `|any` lists all of them.
pub fn parse_service(q: &str) -> Result<ServiceQuery, String> {
    let re = compiled(&SERVICE_RE)?;
    let caps = re.captures(q).ok_or_else(|| {
        format!("invalid service query {q:?}: expected [tag.]name[@dc][|filter], e.g. \"web\" or \"prod.web|any\"")
    })?;
    let get = |n: &str| caps.name(n).map(|m| m.as_str().to_string()).filter(|s| !s.is_empty());
    let name = get("name").ok_or_else(|| format!("invalid service query {q:?}: no service name"))?;
    let statuses = match get("filter") {
        None => vec!["passing".to_string()],
        Some(f) => {
            let mut out = Vec::new();
            for part in f.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if part == "any" {
                    return Ok(ServiceQuery { name, tag: get("tag"), dc: get("dc"), statuses: Vec::new() });
                }
                if !STATUSES.contains(&part) {
                    return Err(format!(
                        "invalid health filter {part:?} in service query {q:?}: use any, passing, warning, critical or maintenance"
                    ));
                }
                out.push(part.to_string());
            }
            out
        }
    };
    Ok(ServiceQuery { name, tag: get("tag"), dc: get("dc"), statuses })
}

/// Parses a `[name][@dc]` query (`node`, `nodes`, `services`): `(name, dc)`.
pub fn parse_node(q: &str) -> Result<(Option<String>, Option<String>), String> {
    let re = compiled(&NODE_RE)?;
    let caps = re.captures(q).ok_or_else(|| format!("invalid query {q:?}: expected [name][@dc]"))?;
    let get = |n: &str| caps.name(n).map(|m| m.as_str().to_string()).filter(|s| !s.is_empty());
    Ok((get("name"), get("dc")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_query_grammar() {
        let q = parse_service("web").expect("plain");
        assert_eq!((q.name.as_str(), q.tag, q.dc), ("web", None, None));
        assert_eq!(q.statuses, ["passing"]);
        let q = parse_service("v1.2.web@dc2|passing,warning").expect("full");
        assert_eq!(q.name, "web");
        assert_eq!(q.tag.as_deref(), Some("v1.2"));
        assert_eq!(q.dc.as_deref(), Some("dc2"));
        assert_eq!(q.statuses, ["passing", "warning"]);
        assert!(parse_service("web|any").expect("any").statuses.is_empty());
        assert!(parse_service("web~agent").is_ok());
        assert!(parse_service("web|bogus").expect_err("bad filter").contains("bogus"));
        assert!(parse_service("").is_err());
        assert!(parse_service("we b").is_err());
    }

    #[test]
    fn node_query_grammar() {
        assert_eq!(parse_node("").expect("empty"), (None, None));
        assert_eq!(parse_node("n1").expect("name"), (Some("n1".into()), None));
        assert_eq!(parse_node("n1@dc2").expect("dc"), (Some("n1".into()), Some("dc2".into())));
        assert_eq!(parse_node("@dc2").expect("dc only"), (None, Some("dc2".into())));
        assert!(parse_node("a b").is_err());
    }
}
