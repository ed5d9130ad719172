//! consul-template's template functions over a [`TemplateData`] source: catalog queries
//! (`service`, `key`, `tree`, ...) that record what they used, and the helpers people use
//! in proxy configs (`byTag`, `join`, `regexReplaceAll`, `parseJSON`, `scratch`, ...), with
//! consul-template's argument order (the piped value comes last).

use std::collections::BTreeMap;
use std::sync::Arc;

use gotmpl::{TemplateError as GoError, Value};

use crate::data::{DataValue, Dependency, KvPair};
use crate::query;
use crate::scope::{AT_FUNC, CONTAINS_METHOD, Scope, SharedScope, lock};
use crate::timefmt;
use crate::value::{self, list, s};

type GoResult = Result<Value, GoError>;
pub(crate) type Func = Arc<dyn Fn(&[Value]) -> GoResult + Send + Sync>;

fn err(fname: &str, msg: impl std::fmt::Display) -> GoError {
    GoError::Exec(format!("{fname}: {msg}"))
}

fn type_name(v: &Value) -> &'static str {
    v.type_name()
}

fn arity(fname: &str, args: &[Value], min: usize, max: usize) -> Result<(), GoError> {
    if args.len() < min || args.len() > max {
        let want = if min == max { format!("{min}") } else { format!("{min} to {max}") };
        return Err(err(fname, format!("wrong number of arguments: expected {want}, got {}", args.len())));
    }
    Ok(())
}

fn string_arg<'a>(fname: &str, args: &'a [Value], i: usize) -> Result<&'a str, GoError> {
    match args.get(i) {
        Some(Value::String(x)) => Ok(x),
        Some(other) => Err(err(fname, format!("argument {} must be a string, got {}", i + 1, type_name(other)))),
        None => Err(err(fname, format!("missing argument {}", i + 1))),
    }
}

fn list_arg(fname: &str, v: &Value) -> Result<Vec<Value>, GoError> {
    match v {
        Value::List(items) => Ok(items.to_vec()),
        Value::Nil => Ok(Vec::new()),
        other => Err(err(fname, format!("expected a list, got {}", type_name(other)))),
    }
}

fn string_list_arg(fname: &str, v: &Value) -> Result<Vec<String>, GoError> {
    list_arg(fname, v)?
        .iter()
        .map(|x| match x {
            Value::String(t) => Ok(t.to_string()),
            other => Err(err(fname, format!("expected a list of strings, found a {}", type_name(other)))),
        })
        .collect()
}

/// Joins string arguments (consul-template joins a query given in several pieces).
fn joined(fname: &str, args: &[Value], sep: &str) -> Result<String, GoError> {
    let parts = (0..args.len()).map(|i| string_arg(fname, args, i)).collect::<Result<Vec<_>, _>>()?;
    Ok(parts.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join(sep))
}

/// Records `dep` as used and asks the source; `None` (unknown yet) also marks it missing.
fn fetch(sc: &mut Scope, dep: Dependency) -> Option<DataValue> {
    sc.used.insert(dep.clone());
    let answer = sc.data.as_ref().and_then(|d| d.fetch(&dep));
    if answer.is_none() {
        sc.missing.insert(dep);
    }
    answer
}

fn regex<'a>(sc: &'a mut Scope, fname: &str, pattern: &str) -> Result<&'a regex::Regex, GoError> {
    if !sc.regexes.contains_key(pattern) {
        let re = regex::Regex::new(pattern).map_err(|e| err(fname, format!("invalid regular expression: {e}")))?;
        sc.regexes.insert(pattern.to_string(), re);
    }
    sc.regexes.get(pattern).ok_or_else(|| err(fname, "regular expression cache lost an entry"))
}

// ------------------------------------------------------------- catalog queries --

fn service(sc: &mut Scope, args: &[Value]) -> GoResult {
    const F: &str = "service";
    if args.is_empty() {
        return Err(err(F, "missing the service query, e.g. service \"web\""));
    }
    let q = query::parse_service(&joined(F, args, "|")?).map_err(|e| err(F, e))?;
    let dep = Dependency::HealthService { name: q.name.clone(), tag: q.tag.clone(), dc: q.dc.clone() };
    let Some(DataValue::HealthService(mut entries)) = fetch(sc, dep) else {
        return Ok(list(Vec::new()));
    };
    entries.retain(|e| q.statuses.is_empty() || q.statuses.contains(&e.status));
    entries.sort_by(|a, b| (&a.node, &a.id).cmp(&(&b.node, &b.id)));
    Ok(list(entries.iter().map(value::service_entry).collect()))
}

fn services(sc: &mut Scope, args: &[Value]) -> GoResult {
    const F: &str = "services";
    let (name, dc) = query::parse_node(&joined(F, args, "")?).map_err(|e| err(F, e))?;
    if let Some(n) = name {
        return Err(err(F, format!("takes only an optional \"@dc\", not {n:?}")));
    }
    let Some(DataValue::CatalogServices(mut all)) = fetch(sc, Dependency::CatalogServices { dc }) else {
        return Ok(list(Vec::new()));
    };
    all.sort_by(|a, b| a.name.cmp(&b.name));
    for x in &mut all {
        x.tags.sort();
        x.tags.dedup();
    }
    Ok(list(all.iter().map(value::service_summary).collect()))
}

fn key_lookup(sc: &mut Scope, fname: &str, args: &[Value]) -> Result<(Dependency, Option<Option<KvPair>>), GoError> {
    let key = string_arg(fname, args, 0)?.trim_start_matches('/').to_string();
    if key.is_empty() {
        return Err(err(fname, "the key is empty"));
    }
    let dep = Dependency::Key { key };
    let answer = match fetch(sc, dep.clone()) {
        Some(DataValue::Key(k)) => Some(k),
        _ => None,
    };
    Ok((dep, answer))
}

/// `key`: blocks (the render stays incomplete) until the key exists, like consul-template.
fn key(sc: &mut Scope, args: &[Value]) -> GoResult {
    arity("key", args, 1, 1)?;
    match key_lookup(sc, "key", args)? {
        (_, Some(Some(pair))) => Ok(s(&pair.value)),
        (dep, Some(None)) => {
            sc.missing.insert(dep);
            Ok(s(""))
        }
        (_, None) => Ok(s("")),
    }
}

fn key_or_default(sc: &mut Scope, args: &[Value]) -> GoResult {
    arity("keyOrDefault", args, 2, 2)?;
    let default = string_arg("keyOrDefault", args, 1)?.to_string();
    match key_lookup(sc, "keyOrDefault", args)? {
        (_, Some(Some(pair))) => Ok(s(&pair.value)),
        _ => Ok(s(&default)),
    }
}

fn key_exists(sc: &mut Scope, args: &[Value]) -> GoResult {
    arity("keyExists", args, 1, 1)?;
    Ok(Value::Bool(matches!(key_lookup(sc, "keyExists", args)?, (_, Some(Some(_))))))
}

/// `ls` (one level), `tree` (recursive), and their `safe` forms, which keep the render
/// incomplete while the prefix is empty (so an empty list never reaches the file).
fn kv_list(sc: &mut Scope, fname: &str, args: &[Value], recursive: bool, safe: bool) -> GoResult {
    arity(fname, args, 1, 1)?;
    let prefix = string_arg(fname, args, 0)?.trim_start_matches('/').to_string();
    let dep = Dependency::KeyPrefix { prefix: prefix.clone() };
    let Some(DataValue::KeyPrefix(pairs)) = fetch(sc, dep.clone()) else {
        return Ok(list(Vec::new()));
    };
    let trim = if prefix.is_empty() || prefix.ends_with('/') { prefix.clone() } else { format!("{prefix}/") };
    let mut out = Vec::new();
    for p in &pairs {
        let rel = p.key.strip_prefix(&trim).unwrap_or(&p.key).trim_start_matches('/');
        if rel.is_empty() || rel.ends_with('/') || (!recursive && rel.contains('/')) {
            continue;
        }
        out.push(value::kv_pair(p, rel));
    }
    if safe && out.is_empty() {
        sc.missing.insert(dep);
    }
    Ok(list(out))
}

fn node(sc: &mut Scope, args: &[Value]) -> GoResult {
    let (name, dc) = query::parse_node(&joined("node", args, "")?).map_err(|e| err("node", e))?;
    match fetch(sc, Dependency::Node { name, dc }) {
        Some(DataValue::Node(Some(n))) => Ok(value::node_services(&n)),
        _ => Ok(Value::Nil),
    }
}

fn nodes(sc: &mut Scope, args: &[Value]) -> GoResult {
    let (name, dc) = query::parse_node(&joined("nodes", args, "")?).map_err(|e| err("nodes", e))?;
    if let Some(n) = name {
        return Err(err("nodes", format!("takes only an optional \"@dc\", not {n:?}")));
    }
    let Some(DataValue::Nodes(mut all)) = fetch(sc, Dependency::Nodes { dc }) else {
        return Ok(list(Vec::new()));
    };
    all.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(list(all.iter().map(value::node).collect()))
}

fn datacenters(sc: &mut Scope, args: &[Value]) -> GoResult {
    arity("datacenters", args, 0, 1)?;
    let Some(DataValue::Datacenters(mut all)) = fetch(sc, Dependency::Datacenters) else {
        return Ok(list(Vec::new()));
    };
    all.sort();
    all.dedup();
    Ok(value::string_list(&all))
}

// -------------------------------------------------------------- list helpers --

/// Go's `==` on the scalar kinds consul-template's `in` compares.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Uint(x), Value::Uint(y)) => x == y,
        (Value::Int(x), Value::Uint(y)) | (Value::Uint(y), Value::Int(x)) => u64::try_from(*x).is_ok_and(|x| x == *y),
        (Value::Float(x), Value::Float(y)) => x == y,
        _ => false,
    }
}

/// consul-template's `in l v`: v is an element of the list l, or a substring of the string l.
fn is_in(l: &Value, v: &Value) -> bool {
    match l {
        Value::List(items) => items.iter().any(|x| same(x, v)),
        Value::String(hay) => matches!(v, Value::String(needle) if hay.contains(needle.as_ref())),
        _ => false,
    }
}

fn two(fname: &str, args: &[Value]) -> Result<(Value, Value), GoError> {
    arity(fname, args, 2, 2)?;
    Ok((args[0].clone(), args[1].clone()))
}

/// `containsAll`, `containsAny`, `containsNone`, `containsNotAll`: `f values list`.
fn contains_some(fname: &str, args: &[Value], want_all: bool, invert: bool) -> GoResult {
    let (values, l) = two(fname, args)?;
    let values = list_arg(fname, &values)?;
    let hit = if want_all { values.iter().all(|v| is_in(&l, v)) } else { values.iter().any(|v| is_in(&l, v)) };
    Ok(Value::Bool(hit != invert))
}

fn group_key_values(fname: &str, entry: &Value, field: &str) -> Result<Vec<String>, GoError> {
    match entry.field(field) {
        Some(v) => string_list_arg(fname, v),
        None => Err(err(fname, format!("list elements have no {field} (pass the result of service or services)"))),
    }
}

fn by_tag(args: &[Value]) -> GoResult {
    arity("byTag", args, 1, 1)?;
    let mut groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in list_arg("byTag", &args[0])? {
        for tag in group_key_values("byTag", &entry, "Tags")? {
            groups.entry(tag).or_default().push(entry.clone());
        }
    }
    Ok(groups_value(groups))
}

fn groups_value(groups: BTreeMap<String, Vec<Value>>) -> Value {
    Value::Map(Arc::new(groups.into_iter().map(|(k, v)| (Arc::from(k.as_str()), list(v))).collect()))
}

/// `byMeta "key1,key2|int" services`: groups by service meta values joined with `_`;
/// `|int` pads numbers to five digits so groups sort numerically.
fn by_meta(sc: &mut Scope, args: &[Value]) -> GoResult {
    const F: &str = "byMeta";
    arity(F, args, 2, 2)?;
    let spec = string_arg(F, args, 0)?.to_string();
    let keys: Vec<&str> = spec.split(',').map(str::trim).collect();
    let normalize = regex(sc, F, "[^a-zA-Z0-9_-]")?.clone();
    let mut groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in list_arg(F, &args[1])? {
        let meta = entry.field("ServiceMeta").cloned().unwrap_or(Value::Nil);
        let mut parts = Vec::new();
        for k in &keys {
            let (name, as_int) = match k.strip_suffix("|int") {
                Some(n) => (n, true),
                None => (*k, false),
            };
            let found = meta.field(name).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_string);
            let raw = match (found, as_int) {
                (Some(v), _) => v,
                (None, true) => "0".to_string(),
                (None, false) => format!("_no_{name}_"),
            };
            let part = if as_int {
                let n: i64 = raw
                    .trim()
                    .parse()
                    .map_err(|_| err(F, format!("cannot parse {raw:?} (meta {name}) as a number")))?;
                format!("{n:05}")
            } else {
                raw
            };
            parts.push(normalize.replace_all(&part, "_").into_owned());
        }
        groups.entry(parts.join("_")).or_default().push(entry);
    }
    Ok(groups_value(groups))
}

// ------------------------------------------------------------ string helpers --

fn string_fn(fname: &'static str, f: fn(&str) -> String) -> impl Fn(&[Value]) -> GoResult {
    move |args: &[Value]| {
        arity(fname, args, 1, 1)?;
        Ok(s(&f(string_arg(fname, args, 0)?)))
    }
}

/// Go's `strings.Title`: upper-cases the first letter of every word.
fn title(x: &str) -> String {
    let mut out = String::with_capacity(x.len());
    let mut prev_sep = true;
    for c in x.chars() {
        if prev_sep {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_sep = !(c.is_alphanumeric() || c == '_' || c == '\'');
    }
    out
}

fn parse_json(args: &[Value]) -> GoResult {
    arity("parseJSON", args, 1, 1)?;
    let text = string_arg("parseJSON", args, 0)?;
    // The empty first render: a key not fetched yet parses as an empty object.
    if text.trim().is_empty() {
        return Ok(Value::Map(Arc::new(BTreeMap::new())));
    }
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| err("parseJSON", format!("invalid JSON: {e}")))?;
    Ok(value::from_json(&v))
}

fn to_json(args: &[Value]) -> GoResult {
    arity("toJSON", args, 1, 1)?;
    let mut out = String::new();
    value::to_json(&args[0], &mut out).map_err(|e| err("toJSON", e))?;
    Ok(s(&out))
}

fn timestamp(sc: &Scope, args: &[Value]) -> GoResult {
    arity("timestamp", args, 0, 1)?;
    match args.first() {
        None => Ok(s(&timefmt::format(timefmt::RFC3339, sc.now))),
        Some(Value::String(f)) if f.as_ref() == "unix" => Ok(s(&timefmt::unix_seconds(sc.now).to_string())),
        Some(_) => Ok(s(&timefmt::format(string_arg("timestamp", args, 0)?, sc.now))),
    }
}

// -------------------------------------------------------------------- scratch --

fn scratch(sc: &mut Scope, method: &str, args: &[Value]) -> GoResult {
    let fname = format!("scratch.{method}");
    let f = fname.as_str();
    match method {
        "Key" => {
            arity(f, args, 1, 1)?;
            Ok(Value::Bool(sc.scratch.contains_key(string_arg(f, args, 0)?)))
        }
        "Get" => {
            arity(f, args, 1, 1)?;
            Ok(sc.scratch.get(string_arg(f, args, 0)?).cloned().unwrap_or(Value::Nil))
        }
        "Set" | "SetX" => {
            arity(f, args, 2, 2)?;
            let k = string_arg(f, args, 0)?.to_string();
            if method == "Set" || !sc.scratch.contains_key(&k) {
                sc.scratch.insert(k, args[1].clone());
            }
            Ok(s(""))
        }
        "MapSet" => {
            arity(f, args, 3, 3)?;
            let k = string_arg(f, args, 0)?.to_string();
            let mk = string_arg(f, args, 1)?;
            let mut m = match sc.scratch.get(&k) {
                None => BTreeMap::new(),
                Some(Value::Map(m)) => m.as_ref().clone(),
                Some(other) => return Err(err(f, format!("{k:?} holds a {}, not a map", type_name(other)))),
            };
            m.insert(Arc::from(mk), args[2].clone());
            sc.scratch.insert(k, Value::Map(Arc::new(m)));
            Ok(s(""))
        }
        "MapValues" => {
            arity(f, args, 1, 1)?;
            let k = string_arg(f, args, 0)?;
            match sc.scratch.get(k) {
                None => Ok(Value::Nil),
                Some(Value::Map(m)) => Ok(list(m.values().cloned().collect())),
                Some(other) => Err(err(f, format!("{k:?} holds a {}, not a map", type_name(other)))),
            }
        }
        _ => Err(err(f, "no such method (scratch has Key, Get, Set, SetX, MapSet, MapValues)")),
    }
}

// ------------------------------------------------------------------ the table --

/// Every function a template may call, bound to the render scope.
// shape: table (one line per template function)
pub(crate) fn all(scope: &SharedScope) -> Vec<(String, Func)> {
    let mut out: Vec<(String, Func)> = Vec::new();
    let mut with_scope = |name: &str, f: fn(&mut Scope, &[Value]) -> GoResult| {
        let scope = scope.clone();
        out.push((name.to_string(), Arc::new(move |args: &[Value]| f(&mut lock(&scope), args))));
    };
    with_scope(AT_FUNC, |sc, args| {
        if let Some(Value::Int(at)) = args.first() {
            sc.at = usize::try_from(*at).unwrap_or(0);
        }
        Ok(s(""))
    });
    with_scope("service", service);
    with_scope("services", services);
    with_scope("key", key);
    with_scope("keyOrDefault", key_or_default);
    with_scope("keyExists", key_exists);
    with_scope("ls", |sc, a| kv_list(sc, "ls", a, false, false));
    with_scope("safeLs", |sc, a| kv_list(sc, "safeLs", a, false, true));
    with_scope("tree", |sc, a| kv_list(sc, "tree", a, true, false));
    with_scope("safeTree", |sc, a| kv_list(sc, "safeTree", a, true, true));
    with_scope("node", node);
    with_scope("nodes", nodes);
    with_scope("datacenters", datacenters);
    with_scope("byMeta", by_meta);
    with_scope("env", |sc, a| {
        arity("env", a, 1, 1)?;
        Ok(s(&(sc.env)(string_arg("env", a, 0)?).unwrap_or_default()))
    });
    with_scope("envOrDefault", |sc, a| {
        arity("envOrDefault", a, 2, 2)?;
        let v = (sc.env)(string_arg("envOrDefault", a, 0)?);
        Ok(s(&v.unwrap_or(string_arg("envOrDefault", a, 1)?.to_string())))
    });
    with_scope("timestamp", |sc, a| timestamp(sc, a));
    with_scope("regexMatch", |sc, a| {
        arity("regexMatch", a, 2, 2)?;
        let text = string_arg("regexMatch", a, 1)?;
        Ok(Value::Bool(regex(sc, "regexMatch", string_arg("regexMatch", a, 0)?)?.is_match(text)))
    });
    with_scope("regexReplaceAll", |sc, a| {
        arity("regexReplaceAll", a, 3, 3)?;
        let (with, text) = (string_arg("regexReplaceAll", a, 1)?, string_arg("regexReplaceAll", a, 2)?);
        let re = regex(sc, "regexReplaceAll", string_arg("regexReplaceAll", a, 0)?)?;
        Ok(s(&re.replace_all(text, with)))
    });
    for method in ["Key", "Get", "Set", "SetX", "MapSet", "MapValues"] {
        let scope = scope.clone();
        out.push((
            format!("scratch.{method}"),
            Arc::new(move |args: &[Value]| scratch(&mut lock(&scope), method, args)),
        ));
    }
    out.push((
        "scratch".into(),
        Arc::new(|_: &[Value]| {
            Err(err("scratch", "call one of its methods: scratch.Key, .Get, .Set, .SetX, .MapSet, .MapValues"))
        }),
    ));

    let pure: Vec<(&str, Func)> = vec![
        ("byTag", Arc::new(by_tag)),
        (
            "in",
            Arc::new(|a: &[Value]| {
                let (l, v) = two("in", a)?;
                Ok(Value::Bool(is_in(&l, &v)))
            }),
        ),
        (
            "contains",
            Arc::new(|a: &[Value]| {
                let (v, l) = two("contains", a)?;
                Ok(Value::Bool(is_in(&l, &v)))
            }),
        ),
        (
            CONTAINS_METHOD,
            Arc::new(|a: &[Value]| {
                let (l, v) = two("Contains", a)?;
                Ok(Value::Bool(is_in(&l, &v)))
            }),
        ),
        ("containsAll", Arc::new(|a: &[Value]| contains_some("containsAll", a, true, false))),
        ("containsAny", Arc::new(|a: &[Value]| contains_some("containsAny", a, false, false))),
        ("containsNone", Arc::new(|a: &[Value]| contains_some("containsNone", a, false, true))),
        ("containsNotAll", Arc::new(|a: &[Value]| contains_some("containsNotAll", a, true, true))),
        (
            "join",
            Arc::new(|a: &[Value]| {
                arity("join", a, 2, 2)?;
                let sep = string_arg("join", a, 0)?;
                Ok(s(&string_list_arg("join", &a[1])?.join(sep)))
            }),
        ),
        (
            "split",
            Arc::new(|a: &[Value]| {
                arity("split", a, 2, 2)?;
                let (sep, text) = (string_arg("split", a, 0)?, string_arg("split", a, 1)?.trim());
                if text.is_empty() {
                    return Ok(list(Vec::new()));
                }
                Ok(list(text.split(sep).map(s).collect()))
            }),
        ),
        ("toLower", Arc::new(string_fn("toLower", str::to_lowercase))),
        ("toUpper", Arc::new(string_fn("toUpper", str::to_uppercase))),
        ("toTitle", Arc::new(string_fn("toTitle", title))),
        ("trimSpace", Arc::new(string_fn("trimSpace", |x| x.trim().to_string()))),
        (
            "replaceAll",
            Arc::new(|a: &[Value]| {
                arity("replaceAll", a, 3, 3)?;
                let (from, to, text) =
                    (string_arg("replaceAll", a, 0)?, string_arg("replaceAll", a, 1)?, string_arg("replaceAll", a, 2)?);
                Ok(s(&text.replace(from, to)))
            }),
        ),
        ("parseJSON", Arc::new(parse_json)),
        ("toJSON", Arc::new(to_json)),
    ];
    out.extend(pure.into_iter().map(|(n, f)| (n.to_string(), f)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_like_go() {
        assert_eq!(title("hello wide world"), "Hello Wide World");
        assert_eq!(title("api-gateway v2"), "Api-Gateway V2");
    }

    #[test]
    fn in_compares_scalars_and_substrings() {
        let l = list(vec![s("a"), Value::Int(3)]);
        assert!(is_in(&l, &s("a")));
        assert!(is_in(&l, &Value::Int(3)));
        assert!(!is_in(&l, &s("3")));
        assert!(is_in(&s("production"), &s("duct")));
    }
}
