//! Rendered output compared with expected text: every Go template action, every
//! consul-template function, whitespace trimming, the empty first render, errors with
//! positions, the in-process catalog source and the built-in templates.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::data::*;
use crate::{Builtin, BuiltinParams, CatalogData, RenderOptions, Rendered, Template, TemplateError};

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[allow(clippy::too_many_arguments)]
fn entry(
    node: &str,
    node_addr: &str,
    id: &str,
    addr: &str,
    port: u16,
    tags: &[&str],
    m: &[(&str, &str)],
    status: &str,
) -> ServiceEntry {
    ServiceEntry {
        node: node.into(),
        node_id: format!("id-{node}"),
        node_address: node_addr.into(),
        node_datacenter: "dc1".into(),
        node_meta: meta(&[("rack", node)]),
        id: id.into(),
        name: "web".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        address: addr.into(),
        port,
        service_meta: meta(m),
        status: status.into(),
        weights_passing: 3,
        weights_warning: 1,
        ..Default::default()
    }
}

fn kv(key: &str, value: &str) -> KvPair {
    KvPair { key: key.into(), value: value.into(), flags: 7, create_index: 3, modify_index: 5, ..Default::default() }
}

fn web() -> Dependency {
    Dependency::HealthService { name: "web".into(), tag: None, dc: None }
}

/// web: two passing instances, one warning, one critical; KV under app/; two nodes.
fn sample() -> StaticData {
    let n1 = NodeInfo {
        id: "id-n1".into(),
        node: "n1".into(),
        address: "10.0.0.1".into(),
        datacenter: "dc1".into(),
        meta: meta(&[("rack", "r1")]),
        ..Default::default()
    };
    let n2 = NodeInfo { node: "n2".into(), address: "10.0.0.2".into(), datacenter: "dc1".into(), ..Default::default() };
    StaticData::new()
        .with(
            web(),
            DataValue::HealthService(vec![
                // Out of order on purpose: service sorts by node, then ID.
                entry("n2", "10.0.0.2", "web-2", "10.1.0.2", 8081, &["prod", "canary"], &[("version", "2")], "passing"),
                entry(
                    "n1",
                    "10.0.0.1",
                    "web-1",
                    "",
                    8080,
                    &["v1", "prod"],
                    &[("version", "1"), ("zone", "a")],
                    "passing",
                ),
                entry("n3", "10.0.0.3", "web-3", "10.1.0.3", 8082, &["prod"], &[("version", "10")], "warning"),
                entry("n3", "10.0.0.3", "web-4", "10.1.0.4", 8083, &[], &[], "critical"),
            ]),
        )
        .with(
            Dependency::CatalogServices { dc: None },
            DataValue::CatalogServices(vec![
                ServiceSummary { name: "web".into(), tags: vec!["prod".into(), "canary".into(), "prod".into()] },
                ServiceSummary { name: "api".into(), tags: vec![] },
            ]),
        )
        .with(Dependency::Key { key: "app/color".into() }, DataValue::Key(Some(kv("app/color", "blue"))))
        .with(Dependency::Key { key: "app/empty".into() }, DataValue::Key(Some(kv("app/empty", ""))))
        .with(Dependency::Key { key: "app/missing".into() }, DataValue::Key(None))
        .with(
            Dependency::Key { key: "app/json".into() },
            DataValue::Key(Some(kv("app/json", r#"{"port": 8080, "hosts": ["a", "b"], "tls": {"on": true}}"#))),
        )
        .with(
            Dependency::KeyPrefix { prefix: "app".into() },
            DataValue::KeyPrefix(vec![
                kv("app/color", "blue"),
                kv("app/db/", ""),
                kv("app/db/host", "db1"),
                kv("app/db/port", "5432"),
                kv("app/size", "3"),
            ]),
        )
        .with(Dependency::KeyPrefix { prefix: "none/".into() }, DataValue::KeyPrefix(vec![]))
        .with(
            Dependency::Node { name: None, dc: None },
            DataValue::Node(Some(NodeServices {
                node: n1.clone(),
                services: vec![
                    NodeService { id: "web-1".into(), service: "web".into(), port: 8080, ..Default::default() },
                    NodeService { id: "api-1".into(), service: "api".into(), port: 9000, ..Default::default() },
                ],
            })),
        )
        .with(Dependency::Node { name: Some("ghost".into()), dc: None }, DataValue::Node(None))
        .with(Dependency::Nodes { dc: None }, DataValue::Nodes(vec![n2, n1]))
        .with(Dependency::Datacenters, DataValue::Datacenters(vec!["dc2".into(), "dc1".into()]))
}

fn opts() -> RenderOptions {
    let env: BTreeMap<String, String> =
        [("HOME", "/root"), ("EMPTY", "")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    RenderOptions {
        now: UNIX_EPOCH + Duration::from_secs(1_709_211_845),
        env: Arc::new(move |k: &str| env.get(k).cloned()),
        params: BTreeMap::new(),
    }
}

fn render_data(src: &str, data: StaticData) -> Rendered {
    let t = Template::parse("test.tmpl", src).unwrap_or_else(|e| panic!("parse {src:?}: {e}"));
    t.render(Arc::new(data), &opts()).unwrap_or_else(|e| panic!("render {src:?}: {e}"))
}

/// Renders with the sample data and asserts the render is complete.
fn render(src: &str) -> String {
    let r = render_data(src, sample());
    assert!(r.is_complete(), "{src:?} is incomplete: {:?}", r.missing);
    r.output
}

fn check(src: &str, expected: &str) {
    assert_eq!(render(src), expected, "template: {src}");
}

// ------------------------------------------------------------------ actions --

#[test]
fn text_and_comments() {
    check("plain text\n", "plain text\n");
    check("a{{/* a comment */}}b", "ab");
}

#[test]
fn range_else_and_variables() {
    check(r#"{{ range service "web" }}{{ .ID }} {{ end }}"#, "web-1 web-2 ");
    check(r#"{{ range $i, $s := service "web" }}{{ $i }}={{ $s.Port }};{{ end }}"#, "0=8080;1=8081;");
    check(r#"{{ range service "web|maintenance" }}x{{ else }}empty{{ end }}"#, "empty");
    check(r#"{{ range $k, $v := parseJSON `{"b":1,"a":2}` }}{{ $k }}{{ $v }} {{ end }}"#, "a2 b1 ");
    check(
        r#"{{ range service "web|any" }}{{ if eq .Status "critical" }}{{ break }}{{ end }}{{ .ID }},{{ end }}"#,
        "web-1,web-2,web-3,",
    );
    check(
        r#"{{ range service "web|any" }}{{ if ne .Status "passing" }}{{ continue }}{{ end }}{{ .ID }},{{ end }}"#,
        "web-1,web-2,",
    );
}

#[test]
fn with_and_else() {
    check(r#"{{ with key "app/color" }}color={{ . }}{{ end }}"#, "color=blue");
    check(r#"{{ with keyOrDefault "app/missing" "" }}x{{ else }}no value{{ end }}"#, "no value");
    check(r#"{{ with node "ghost" }}x{{ else }}no node{{ end }}"#, "no node");
}

#[test]
fn if_else_if_else() {
    let t = r#"{{ $n := len (service "web") }}{{ if gt $n 5 }}many{{ else if eq $n 2 }}two{{ else }}other{{ end }}"#;
    check(t, "two");
    check(r#"{{ if keyExists "app/missing" }}yes{{ else }}no{{ end }}"#, "no");
}

#[test]
fn define_and_template() {
    let t = r#"{{ define "srv" }}server {{ .Address }}:{{ .Port }};{{ end }}{{ range service "web" }}{{ template "srv" . }} {{ end }}"#;
    check(t, "server 10.0.0.1:8080; server 10.1.0.2:8081; ");
    check(r#"{{ define "hi" }}hi{{ end }}{{ template "hi" }}!"#, "hi!");
}

#[test]
fn variables_assignment_and_root() {
    check(r#"{{ $x := "a" }}{{ $x = "b" }}{{ $x }}"#, "b");
    check(
        r#"{{ $first := "" }}{{ range service "web" }}{{ if not $first }}{{ $first = .ID }}{{ end }}{{ end }}{{ $first }}"#,
        "web-1",
    );
    let t = Template::parse("t", "{{ range split \",\" \"a,b\" }}{{ . }}{{ $.Listen }} {{ end }}").expect("parse");
    let mut o = opts();
    o.params.insert("Listen".into(), "80".into());
    assert_eq!(t.render(Arc::new(sample()), &o).expect("render").output, "a80 b80 ");
}

#[test]
fn pipelines_and_builtins() {
    check(r#"{{ "x" | printf "%s-%s" "a" }}"#, "a-x");
    check(r#"{{ printf "%05d|%-4s|%q|%v" 42 "ab" "q" true }}"#, "00042|ab  |\"q\"|true");
    check(r#"{{ print "a" 1 2 "b" }}"#, "a1 2b");
    check(r#"{{ len "four" }} {{ len (service "web") }} {{ len (tree "app") }}"#, "4 2 4");
    check(
        r#"{{ index (service "web") 1 }}"#,
        "map[Address:10.1.0.2 Checks:[] ID:web-2 Kind: Name:web Namespace: Node:n2 NodeAddress:10.0.0.2 NodeDatacenter:dc1 NodeID:id-n2 NodeMeta:map[rack:n2] NodeTaggedAddresses:map[] Port:8081 ServiceMeta:map[version:2] Status:passing Tags:[canary prod] Weights:map[Passing:3 Warning:1]]",
    );
    check(r#"{{ (index (service "web") 1).ID }} {{ index (index (service "web") 0).ServiceMeta "zone" }}"#, "web-2 a");
}

#[test]
fn comparisons_and_logic() {
    check(
        "{{ eq 1 1 }} {{ eq \"a\" \"b\" \"a\" }} {{ ne 1 2 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt 1 2 }} {{ ge 3 2 }}",
        "true true true true true false true",
    );
    check("{{ and 1 0 }} {{ and 1 \"x\" }} {{ or 0 \"\" }} {{ or 0 \"y\" }} {{ not true }}", "0 x  y false");
    // and/or stop at the deciding value, so a failing call after it never runs.
    check(r#"{{ if and false (index (service "web") 9) }}x{{ else }}short{{ end }}"#, "short");
}

// --------------------------------------------------------- whitespace trimming --

#[test]
fn whitespace_trimming_like_go() {
    check("a  {{- \"1\" -}}  b", "a1b");
    check("a  {{- \"1\" }}  b", "a1  b");
    check("a  {{ \"1\" -}}  b", "a  1b");
    check("x\n  {{- /* comment */ -}}\n  y", "xy");
    check("{{ \"a\" }}\n{{- \"b\" }}\n", "ab\n");
    // `{{-3}}` is the number -3: trimming needs a space after the dash.
    check("{{-3}}", "-3");
    let t = "upstream web {\n{{- range service \"web\" }}\n  server {{ .Address }}:{{ .Port }};\n{{- end }}\n}\n";
    check(t, "upstream web {\n  server 10.0.0.1:8080;\n  server 10.1.0.2:8081;\n}\n");
    let t = "{{ range service \"web\" -}}\n  {{ .ID }}\n{{ end -}}\ndone";
    check(t, "web-1\nweb-2\ndone");
}

// --------------------------------------------------------- catalog functions --

#[test]
fn service_is_healthy_only_and_sorted() {
    let t = r#"{{ range service "web" }}{{ .Node }} {{ .NodeAddress }} {{ .Address }} {{ .ID }} {{ .Name }} {{ .Tags }} {{ .Port }} {{ .ServiceMeta.version }} {{ .NodeMeta.rack }} {{ .Status }} {{ .Weights.Passing }}/{{ .Weights.Warning }}
{{ end }}"#;
    check(
        t,
        "n1 10.0.0.1 10.0.0.1 web-1 web [prod v1] 8080 1 n1 passing 3/1\n\
         n2 10.0.0.2 10.1.0.2 web-2 web [canary prod] 8081 2 n2 passing 3/1\n",
    );
    check(
        r#"{{ range service "web|any" }}{{ .ID }}:{{ .Status }} {{ end }}"#,
        "web-1:passing web-2:passing web-3:warning web-4:critical ",
    );
    check(r#"{{ range service "web|passing,warning" }}{{ .ID }} {{ end }}"#, "web-1 web-2 web-3 ");
    check(r#"{{ range service "web" "critical" }}{{ .ID }} {{ end }}"#, "web-4 ");
    check(r#"{{ range service "web" }}{{ if .Tags.Contains "v1" }}{{ .ID }}{{ end }}{{ end }}"#, "web-1");
}

#[test]
fn services_nodes_datacenters() {
    check(r#"{{ range services }}{{ .Name }}:{{ join "," .Tags }} {{ end }}"#, "api: web:canary,prod ");
    check(
        r#"{{ range nodes }}{{ .Node }}@{{ .Address }}/{{ .Datacenter }} {{ end }}"#,
        "n1@10.0.0.1/dc1 n2@10.0.0.2/dc1 ",
    );
    check(
        r#"{{ with node }}{{ .Node.Node }} {{ .Node.Meta.rack }}:{{ range .Services }} {{ .Service }}/{{ .ID }}:{{ .Port }}{{ end }}{{ end }}"#,
        "n1 r1: api/api-1:9000 web/web-1:8080",
    );
    check(r#"{{ datacenters }}"#, "[dc1 dc2]");
}

#[test]
fn keys() {
    check(r#"{{ key "app/color" }}|{{ key "/app/color" }}|{{ key "app/empty" }}|"#, "blue|blue||");
    check(r#"{{ keyOrDefault "app/color" "red" }} {{ keyOrDefault "app/missing" "red" }}"#, "blue red");
    check(r#"{{ keyExists "app/color" }} {{ keyExists "app/missing" }}"#, "true false");
    // key blocks (like consul-template) until the key exists: the render is incomplete.
    let r = render_data(r#"a{{ key "app/missing" }}b"#, sample());
    assert_eq!(r.output, "ab");
    assert_eq!(r.missing, BTreeSet::from([Dependency::Key { key: "app/missing".into() }]));
}

#[test]
fn ls_and_tree() {
    check(r#"{{ range ls "app" }}{{ .Key }}={{ .Value }} {{ end }}"#, "color=blue size=3 ");
    check(r#"{{ range tree "app" }}{{ .Key }}={{ .Value }} {{ end }}"#, "color=blue db/host=db1 db/port=5432 size=3 ");
    check(
        r#"{{ range ls "app" }}{{ .Path }}:{{ .Flags }}:{{ .ModifyIndex }} {{ end }}"#,
        "app/color:7:5 app/size:7:5 ",
    );
    check(
        r#"{{ range safeLs "app" }}{{ .Key }} {{ end }}|{{ range safeTree "app" }}{{ .Key }} {{ end }}"#,
        "color size |color db/host db/port size ",
    );
    // safe forms never render an empty list: the render stays incomplete.
    let r = render_data(r#"{{ range safeLs "none/" }}x{{ end }}{{ range safeTree "none/" }}x{{ end }}"#, sample());
    assert_eq!(r.missing, BTreeSet::from([Dependency::KeyPrefix { prefix: "none/".into() }]));
    assert!(render_data(r#"{{ range ls "none/" }}x{{ end }}"#, sample()).is_complete());
}

#[test]
fn by_tag_and_by_meta() {
    check(
        r#"{{ range $tag, $s := service "web" | byTag }}{{ $tag }}:{{ range $s }}{{ .ID }},{{ end }} {{ end }}"#,
        "canary:web-2, prod:web-1,web-2, v1:web-1, ",
    );
    check(r#"{{ range $tag, $s := services | byTag }}{{ $tag }}={{ len $s }} {{ end }}"#, "canary=1 prod=1 ");
    check(
        r#"{{ range $k, $s := service "web|any" | byMeta "version|int" }}{{ $k }}:{{ range $s }}{{ .ID }}{{ end }} {{ end }}"#,
        "00000:web-4 00001:web-1 00002:web-2 00010:web-3 ",
    );
    check(r#"{{ range $k, $s := service "web" | byMeta "zone,version" }}{{ $k }} {{ end }}"#, "_no_zone__2 a_1 ");
}

// ------------------------------------------------------------ helper functions --

#[test]
fn membership() {
    check(r#"{{ range service "web" }}{{ if .Tags | contains "v1" }}{{ .ID }}{{ end }}{{ end }}"#, "web-1");
    check(
        r#"{{ if in (index (service "web") 0).Tags "prod" }}in{{ end }} {{ in "production" "duct" }} {{ contains "x" "abc" }}"#,
        "in true false",
    );
    check(
        r#"{{ $want := split "," "prod,v1" }}{{ range service "web" }}{{ .ID }}:{{ containsAll $want .Tags }}/{{ containsAny $want .Tags }} {{ end }}"#,
        "web-1:true/true web-2:false/true ",
    );
    check(
        r#"{{ containsAny (split "," "x,y") (split "," "a,b") }} {{ containsAll (split "," "") (split "," "a") }}"#,
        "false true",
    );
}

#[test]
fn strings() {
    check(r#"{{ join "," (split ":" "a:b:c") }}|{{ len (split "," "") }}|{{ split "," " x,y " }}"#, "a,b,c|0|[x y]");
    check(
        r#"{{ "Hello World" | toLower }} {{ "abc" | toUpper }} {{ "hello wide world" | toTitle }} [{{ "  pad \n" | trimSpace }}]"#,
        "hello world ABC Hello Wide World [pad]",
    );
    check(r#"{{ "foo.bar.baz" | replaceAll "." "_" }}"#, "foo_bar_baz");
    check(r#"{{ "v1.2.3" | regexMatch "^v[0-9]+" }} {{ regexMatch "^x" "v1" }}"#, "true false");
    check(r#"{{ "web-01.example" | regexReplaceAll "([a-z]+)-0*([0-9]+)" "${2}_$1" }}"#, "1_web.example");
}

#[test]
fn json_functions() {
    check(
        r#"{{ with key "app/json" | parseJSON }}{{ .port }} {{ index .hosts 1 }} {{ .tls.on }}{{ end }}"#,
        "8080 b true",
    );
    check(r#"{{ key "app/json" | parseJSON | toJSON }}"#, r#"{"hosts":["a","b"],"port":8080,"tls":{"on":true}}"#);
    check(r#"{{ (index (service "web") 0).ServiceMeta | toJSON }}"#, r#"{"version":"1","zone":"a"}"#);
    check(r#"{{ len (parseJSON "") }}"#, "0");
}

#[test]
fn env_and_timestamp() {
    check(
        r#"{{ env "HOME" }}|{{ env "NOPE" }}|{{ envOrDefault "NOPE" "dflt" }}|{{ envOrDefault "EMPTY" "dflt" }}|"#,
        "/root||dflt||",
    );
    check(
        r#"{{ timestamp }} {{ timestamp "unix" }} {{ timestamp "2006-01-02 15:04" }}"#,
        "2024-02-29T13:04:05Z 1709211845 2024-02-29 13:04",
    );
}

#[test]
fn scratch() {
    check(
        r#"{{ scratch.Set "a" "1" }}{{ scratch.SetX "a" "2" }}{{ scratch.SetX "b" "3" }}{{ scratch.Get "a" }}{{ scratch.Get "b" }} {{ scratch.Key "a" }} {{ scratch.Key "zz" }}"#,
        "13 true false",
    );
    check(
        r#"{{ range service "web" }}{{ scratch.MapSet "ports" .ID .Port }}{{ end }}{{ range scratch.MapValues "ports" }}{{ . }} {{ end }}"#,
        "8080 8081 ",
    );
    // Every render starts with an empty scratch.
    let t = Template::parse("t", r#"{{ if scratch.Key "x" }}again{{ end }}{{ scratch.Set "x" 1 }}"#).expect("parse");
    for _ in 0..2 {
        assert_eq!(t.render(Arc::new(sample()), &opts()).expect("render").output, "");
    }
}

// --------------------------------------------------------- the empty first render --

#[test]
fn empty_first_render_runs_and_records_what_it_waits_for() {
    let src = r#"upstream web {
{{- range service "web" }}
  server {{ .Address }}:{{ .Port }};
{{- end }}
}
color={{ key "app/color" }} port={{ (key "app/json" | parseJSON).port }} n={{ len (tree "app") }} node={{ with node }}{{ .Node.Node }}{{ end }}
"#;
    let r = render_data(src, StaticData::new());
    assert!(!r.is_complete());
    assert_eq!(r.output, "upstream web {\n}\ncolor= port=<no value> n=0 node=\n");
    let expected = BTreeSet::from([
        web(),
        Dependency::Key { key: "app/color".into() },
        Dependency::Key { key: "app/json".into() },
        Dependency::KeyPrefix { prefix: "app".into() },
        Dependency::Node { name: None, dc: None },
    ]);
    assert_eq!(r.used, expected);
    assert_eq!(r.missing, expected);
    let full = render_data(src, sample());
    assert!(full.is_complete());
    assert_eq!(full.used, expected);
    assert!(full.output.contains("server 10.0.0.1:8080;"));
}

#[test]
fn an_error_with_missing_data_is_an_incomplete_render() {
    let r = render_data(r#"{{ (index (service "web") 0).Port }}"#, StaticData::new());
    assert!(!r.is_complete());
}

// ------------------------------------------------------------------ bad input --

#[test]
fn syntax_errors_have_file_line_column() {
    let e = Template::parse("site.ctmpl", "ok\n{{ range service \"web\" }}\n").expect_err("unclosed range");
    let msg = e.to_string();
    assert!(matches!(e, TemplateError::Syntax { line: 2, col: 4, .. }), "{msg}");
    assert!(msg.contains("{{range}} has no {{end}}"), "{msg}");
    let e = Template::parse("site.ctmpl", "a {{ end }}").expect_err("stray end");
    assert!(matches!(e, TemplateError::Syntax { line: 1, col: 6, .. }), "{e}");
    let e = Template::parse("site.ctmpl", "{{/* {{ if }} */}}{{ \"{{ end }}\" }}{{ else }}").expect_err("stray else");
    assert!(e.to_string().contains("unexpected {{else}}"), "{e}");
    assert!(msg.starts_with("site.ctmpl:"), "{msg}");
    let e = Template::parse("site.ctmpl", "a\nb {{ .X | }}").expect_err("empty command");
    assert!(matches!(e, TemplateError::Syntax { line: 2, .. }), "{e}");
}

#[test]
fn unknown_functions_fail_at_parse_time_with_position() {
    let e = Template::parse("site.ctmpl", "line1\n  {{ if true }}{{ servcie \"web\" }}{{ end }}").expect_err("typo");
    match &e {
        TemplateError::Syntax { name, line, col, message } => {
            assert_eq!((name.as_str(), *line, *col), ("site.ctmpl", 2, 19), "{e}");
            assert!(message.contains("\"servcie\" not defined"), "{e}");
        }
        other => panic!("{other}"),
    }
    assert!(Template::parse("t", "{{ define \"x\" }}{{ nope }}{{ end }}").is_err());
    assert!(Template::parse("t", "{{ scratch.Set \"a\" 1 }}{{ .Tags.Contains \"x\" }}").is_ok());
}

#[test]
fn runtime_errors_name_template_and_position() {
    let t = Template::parse("site.ctmpl", "a\nb\n   {{ index (service \"web\") 7 }}").expect("parse");
    let e = t.render(Arc::new(sample()), &opts()).expect_err("out of range");
    let msg = e.to_string();
    assert!(matches!(e, TemplateError::Render { line: 3, col: 7, .. }), "{msg}");
    assert!(msg.starts_with("site.ctmpl:3:7:") && msg.contains("index"), "{msg}");
    let t =
        Template::parse("t", "{{ define \"x\" }}\n{{ parseJSON \"{\" }}{{ end }}{{ template \"x\" }}").expect("parse");
    let e = t.render(Arc::new(sample()), &opts()).expect_err("bad json");
    assert!(matches!(e, TemplateError::Render { line: 2, col: 4, .. }), "{e}");
    assert!(e.to_string().contains("parseJSON: invalid JSON"), "{e}");
    let e = Template::parse("t", r#"{{ service "web|bogus" }}"#).expect("parse").render(Arc::new(sample()), &opts());
    assert!(e.expect_err("bad filter").to_string().contains("invalid health filter"));
}

// ----------------------------------------------------------- catalog source --

mod catalog {
    use super::*;
    use ::catalog::command::Command;
    use ::catalog::model::{CheckStatus, HealthCheck, Node, Service, Weights};
    use ::catalog::state::CatalogState;

    fn register(
        st: &mut CatalogState,
        idx: u64,
        node: &str,
        addr: &str,
        svc: Option<Service>,
        check: Option<CheckStatus>,
    ) {
        let checks = match (&svc, check) {
            (Some(s), Some(status)) => vec![HealthCheck {
                node: node.into(),
                check_id: format!("chk-{}", s.id),
                name: "probe".into(),
                status,
                service_id: s.id.clone(),
                service_name: s.service.clone(),
                ..Default::default()
            }],
            _ => vec![],
        };
        let cmd = Command::Register {
            node: Node { node: node.into(), address: addr.into(), datacenter: "dc1".into(), ..Default::default() },
            service: svc,
            checks,
            skip_node_update: false,
            replace_service_checks: true,
        };
        st.apply(idx, &cmd);
    }

    fn svc(id: &str, name: &str, port: u16, tags: &[&str]) -> Service {
        Service {
            id: id.into(),
            service: name.into(),
            port,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            weights: Weights { passing: 5, warning: 1 },
            ..Default::default()
        }
    }

    #[test]
    fn renders_from_the_in_process_catalog() {
        let mut st = CatalogState::default();
        register(&mut st, 1, "n1", "10.0.0.1", Some(svc("web-1", "web", 8080, &["prod"])), Some(CheckStatus::Passing));
        register(
            &mut st,
            2,
            "n2",
            "10.0.0.2",
            Some(svc("web-2", "web", 8081, &["canary"])),
            Some(CheckStatus::Critical),
        );
        register(&mut st, 3, "n2", "10.0.0.2", Some(svc("api-1", "api", 9000, &[])), None);
        st.apply(4, &Command::KvSet { key: "cfg/a".into(), value: b"1".to_vec(), flags: 0, cas: None });
        let data = Arc::new(CatalogData::new(Arc::new(st), "n1", "dc1"));
        let src = r#"{{ range service "web|any" }}{{ .ID }}={{ .Address }}:{{ .Port }}/{{ .Status }}/{{ .Weights.Passing }} {{ end }}|{{ range service "prod.web" }}{{ .ID }}{{ end }}|{{ range service "web@dc9|any" }}x{{ end }}|{{ range services }}{{ .Name }}{{ .Tags }} {{ end }}|{{ key "cfg/a" }}|{{ with node }}{{ .Node.Address }}{{ end }}|{{ len nodes }}|{{ datacenters }}"#;
        let t = Template::parse("t", src).expect("parse");
        let r = t.render(data, &opts()).expect("render");
        assert!(r.is_complete());
        assert_eq!(
            r.output,
            "web-1=10.0.0.1:8080/passing/5 web-2=10.0.0.2:8081/critical/5 |web-1||api[] web[canary prod] |1|10.0.0.1|2|[dc1]"
        );
    }
}

// ------------------------------------------------------------ built-in templates --

fn pool(name: &str, n: usize, status: &str) -> Vec<ServiceEntry> {
    (0..n)
        .map(|i| {
            let mut e =
                entry(&format!("n{i}"), "127.0.0.1", &format!("{name}-{i}"), "", 8000 + i as u16, &[], &[], status);
            e.name = name.into();
            e
        })
        .collect()
}

fn catalog_of(services: &[(&str, Vec<ServiceEntry>)]) -> StaticData {
    let mut d = StaticData::new().with(
        Dependency::CatalogServices { dc: None },
        DataValue::CatalogServices(
            services.iter().map(|(n, _)| ServiceSummary { name: n.to_string(), tags: vec![] }).collect(),
        ),
    );
    for (n, entries) in services {
        d = d.with(
            Dependency::HealthService { name: n.to_string(), tag: None, dc: None },
            DataValue::HealthService(entries.clone()),
        );
    }
    d
}

fn builtin(b: Builtin, data: StaticData, params: BuiltinParams) -> String {
    let t = b.template().expect("built-in parses");
    let mut o = opts();
    o.params = params.to_dot();
    let r = t.render(Arc::new(data), &o).expect("built-in renders");
    assert!(r.is_complete(), "{:?}", r.missing);
    r.output
}

#[test]
fn builtin_nginx_has_no_empty_upstream_and_answers_503() {
    let data = catalog_of(&[("web", pool("web", 2, "passing")), ("db-x", pool("db-x", 1, "critical"))]);
    let out = builtin(Builtin::Nginx, data, BuiltinParams { listen: "8080".into(), ..Default::default() });
    assert!(out.contains("    upstream web {\n        server 127.0.0.1:8000 max_fails=3 fail_timeout=10s;\n        server 127.0.0.1:8001 max_fails=3 fail_timeout=10s;\n        keepalive 32;\n    }\n"), "{out}");
    assert!(!out.contains("upstream db_x"), "{out}");
    assert!(out.contains("return 503 \"no healthy instance of service db-x\\n\";"), "{out}");
    assert!(out.contains("server_name db-x.localhost db-x;"), "{out}");
    assert!(out.contains("listen 8080 default_server;"), "{out}");
    for header in ["Host $host", "X-Real-IP $remote_addr", "X-Forwarded-For $proxy_add_x_forwarded_for"] {
        assert!(out.contains(&format!("proxy_set_header {header};")), "{out}");
    }
    let only = builtin(
        Builtin::Nginx,
        catalog_of(&[("web", pool("web", 1, "passing")), ("api", pool("api", 1, "passing"))]),
        BuiltinParams { service: Some("web".into()), ..Default::default() },
    );
    assert!(only.contains("upstream web {") && !only.contains("upstream api"), "{only}");
    assert!(
        only.contains("listen 80 default_server;") && only.matches("proxy_pass http://web;").count() == 2,
        "{only}"
    );
}

#[test]
fn builtin_haproxy_backends() {
    let data = catalog_of(&[("web", pool("web", 2, "passing")), ("api", vec![])]);
    let out = builtin(Builtin::Haproxy, data, BuiltinParams { listen: "127.0.0.1:9000".into(), ..Default::default() });
    assert!(out.contains("    bind 127.0.0.1:9000\n"), "{out}");
    assert!(out.contains("backend svc_web\n    balance roundrobin\n    server web_0 127.0.0.1:8000\n    server web_1 127.0.0.1:8001\n"), "{out}");
    assert!(out.contains("backend svc_api\n    balance roundrobin\n    http-request return status 503"), "{out}");
    assert!(out.contains("default_backend wharf_no_route"), "{out}");
    let missing =
        builtin(Builtin::Haproxy, catalog_of(&[]), BuiltinParams { service: Some("web".into()), ..Default::default() });
    assert!(
        missing.contains("default_backend svc_web")
            && missing.contains("backend svc_web\n    http-request return status 503"),
        "{missing}"
    );
}

#[test]
fn classic_example_renders_without_edits() {
    let src = include_str!("../examples/nginx-classic.ctmpl");
    let data = catalog_of(&[("web", pool("web", 2, "passing"))]);
    let r = render_data(src, data);
    assert!(r.is_complete());
    assert!(
        r.output.contains("server 127.0.0.1:8000 max_fails=3 fail_timeout=60 weight=1;\n  server 127.0.0.1:8001"),
        "{}",
        r.output
    );
    let empty = render_data(src, catalog_of(&[("web", vec![])]));
    assert!(empty.output.contains("server 127.0.0.1:65535; # force a 502"), "{}", empty.output);
}

/// Regression: a non-ASCII identifier (Go allows Unicode letters) or non-ASCII text inside
/// an action made the block scan slice the source inside a character, and `wharf template`
/// (and the agent) panicked.
#[test]
fn non_ascii_identifiers_and_text_in_actions_do_not_panic() {
    for src in [
        "{{ $prénom := \"Zoé\" }}{{ $prénom }}",
        "{{ if true }}é{{ \"ü\" }}{{ end }}",
        "{{ /* é */ }}ok",
        "{{ \"\\é\" }}",
        "{{ `é` }}{{ é",
        "日本{{ if true }}語{{ end }}",
    ] {
        let _ = Template::parse("t.ctmpl", src);
    }
    assert_eq!(render("{{ $prénom := \"Zoé\" }}{{ $prénom }}"), "Zoé");
    let e = Template::parse("t.ctmpl", "é\n{{ if true }}ü").expect_err("unclosed if");
    assert!(e.to_string().contains("t.ctmpl:2:"), "{e}");
}

#[test]
fn endless_template_recursion_is_an_error_not_a_crash() {
    let t = Template::parse("loop.tmpl", r#"{{define "a"}}x{{template "a" .}}{{end}}{{template "a" .}}"#)
        .expect("parses: recursion is legal Go template syntax");
    let e = t.render(Arc::new(sample()), &opts()).expect_err("must stop");
    assert!(e.to_string().contains("loop.tmpl"), "{e}");
}
