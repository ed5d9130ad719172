//! A parsed consul-template template and its render: Go's text/template language comes
//! from the `gotmpl` crate; this module adds what consul-template users need on top of it:
//! the function set (checked at parse time, like Go), `scratch.Key`-style method calls,
//! runtime errors that name the template and position, and the record of which catalog
//! data a render used.
//!
//! Rendering is pure: the catalog comes in through [`TemplateData`], the clock and the
//! environment through [`RenderOptions`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use gotmpl::Value;
use gotmpl::parse::{ActionNode, CommandNode, Expr, ListNode, Node, Number, PipeNode, Pos};

use crate::data::{Dependency, TemplateData};
use crate::funcs;
use crate::scope::{AT_FUNC, CONTAINS_METHOD, RenderOptions, Scope, SharedScope, lock};

/// The result of one render.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub output: String,
    /// Every catalog query the render made.
    pub used: BTreeSet<Dependency>,
    /// Queries the data source could not answer yet, or that must not render empty
    /// (`key` of an absent key, `safeLs` of an empty prefix). A render with any is
    /// incomplete: its output must not be written.
    pub missing: BTreeSet<Dependency>,
}

impl Rendered {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Why a template could not be parsed or rendered. Positions are 1-based.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{name}:{line}:{col}: {message}")]
    Syntax { name: String, line: usize, col: usize, message: String },
    #[error("{name}:{line}:{col}: {message}; the previous output is kept")]
    Render { name: String, line: usize, col: usize, message: String },
}

const SCRATCH_METHODS: [&str; 6] = ["Key", "Get", "Set", "SetX", "MapSet", "MapValues"];

/// Go's text/template builtins, as gotmpl provides them.
const BUILTINS: [&str; 19] = [
    "and", "call", "eq", "ge", "gt", "html", "index", "js", "le", "len", "lt", "ne", "not", "or", "print", "printf",
    "println", "slice", "urlquery",
];

/// A parsed template, ready to render many times.
pub struct Template {
    name: String,
    source: Arc<str>,
    inner: gotmpl::Template,
    scope: SharedScope,
    render_lock: Mutex<()>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Template {
    /// Parses `source`; `name` (usually the file path) appears in error messages.
    /// Syntax errors and unknown functions are reported with line and column.
    pub fn parse(name: &str, source: &str) -> Result<Template, TemplateError> {
        let scope: SharedScope = Arc::new(Mutex::new(Scope::new()));
        let mut known: BTreeSet<String> = BUILTINS.iter().map(|s| s.to_string()).collect();
        let mut t = gotmpl::Template::new(name);
        for (fname, f) in funcs::all(&scope) {
            known.insert(fname.clone());
            t = t.func(&fname, move |args: &[Value]| f(args));
        }
        let mut t = t.parse(source).map_err(|e| syntax_error(name, source, e))?;
        check_blocks(source).map_err(|(offset, message)| {
            let (line, col) = line_col(source, offset);
            TemplateError::Syntax { name: name.to_string(), line, col, message }
        })?;
        let names: Vec<String> = t.templates().iter().map(|s| s.to_string()).collect();
        for tname in names {
            let Some(tree) = t.lookup(&tname) else { continue };
            let mut tree = tree.clone();
            check_functions(&tree, &known).map_err(|(pos, fname)| {
                let (line, col) = line_col(source, pos.offset);
                TemplateError::Syntax {
                    name: name.to_string(),
                    line,
                    col,
                    message: format!("function {fname:?} not defined"),
                }
            })?;
            instrument(&mut tree);
            t = t.add_parse_tree(&tname, tree);
        }
        Ok(Template { name: name.to_string(), source: Arc::from(source), inner: t, scope, render_lock: Mutex::new(()) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders against `data`. A runtime error names the template and the position of the
    /// failing action; when data was still missing the render is reported incomplete
    /// instead (the error may come from the missing data, as in consul-template's first
    /// pass).
    pub fn render(&self, data: Arc<dyn TemplateData>, opts: &RenderOptions) -> Result<Rendered, TemplateError> {
        let _one_at_a_time = self.render_lock.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut sc = lock(&self.scope);
            sc.data = Some(data);
            sc.used.clear();
            sc.missing.clear();
            sc.scratch.clear();
            sc.at = 0;
            sc.now = opts.now;
            sc.env = opts.env.clone();
        }
        let dot = if opts.params.is_empty() {
            Value::Nil
        } else {
            crate::value::map(opts.params.iter().map(|(k, v)| (k.as_str(), crate::value::s(v))))
        };
        // gotmpl keeps the main body twice: as `tree` (which `add_parse_tree` cannot
        // replace) and under the template's own name (which it can, and which got the
        // instrumented copy). An all-whitespace body exists only as `tree`.
        let result = if self.inner.lookup(&self.name).is_some() {
            self.inner.execute_template_to_string(&self.name, &dot)
        } else {
            self.inner.execute_to_string(&dot)
        };
        let (used, missing, at) = {
            let mut sc = lock(&self.scope);
            sc.data = None;
            sc.scratch.clear();
            (std::mem::take(&mut sc.used), std::mem::take(&mut sc.missing), sc.at)
        };
        match result {
            Ok(output) => Ok(Rendered { output, used, missing }),
            Err(_) if !missing.is_empty() => Ok(Rendered { output: String::new(), used, missing }),
            Err(e) => {
                let (line, col) = line_col(&self.source, at);
                Err(TemplateError::Render { name: self.name.clone(), line, col, message: e.to_string() })
            }
        }
    }
}

fn syntax_error(name: &str, source: &str, e: gotmpl::TemplateError) -> TemplateError {
    match e {
        gotmpl::TemplateError::Parse { line, col, message, .. }
        | gotmpl::TemplateError::Lex { line, col, message, .. } => {
            TemplateError::Syntax { name: name.to_string(), line, col, message }
        }
        other => {
            let (line, col) = line_col(source, source.len());
            TemplateError::Syntax { name: name.to_string(), line, col, message: other.to_string() }
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

/// Go rejects an `{{end}}` or `{{else}}` with no block to close and a block left open at
/// the end of the text; gotmpl's parser stops quietly at both. This scan of the actions'
/// first words (skipping comments and quoted text) restores Go's errors.
fn check_blocks(source: &str) -> Result<(), (usize, String)> {
    // Byte offsets throughout: the scan looks only at ASCII bytes (delimiters, quotes,
    // keywords), so text in any script between them is stepped over, never sliced.
    let b = source.as_bytes();
    let find = |from: usize, pat: &[u8]| -> Option<usize> {
        b.get(from..)?.windows(pat.len()).position(|w| w == pat).map(|p| from + p)
    };
    let mut open: Vec<(&str, usize)> = Vec::new();
    let mut i = 0;
    while let Some(start) = find(i, b"{{") {
        let mut j = start + 2;
        if b.get(j) == Some(&b'-') && b.get(j + 1).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        while b.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        if b[j..].starts_with(b"/*") {
            i = find(j, b"*/").map_or(b.len(), |e| e + 2);
            continue;
        }
        let word_end = (j..b.len()).find(|&k| !(b[k].is_ascii_alphanumeric() || b[k] == b'_')).unwrap_or(b.len());
        // ASCII letters, digits and '_' only: always valid UTF-8.
        let word = std::str::from_utf8(&b[j..word_end]).unwrap_or_default();
        match word {
            "if" => open.push(("if", j)),
            "range" => open.push(("range", j)),
            "with" => open.push(("with", j)),
            "define" => open.push(("define", j)),
            "block" => open.push(("block", j)),
            "else" if !matches!(open.last(), Some(("if" | "range" | "with", _))) => {
                return Err((j, "unexpected {{else}}: no {{if}}, {{range}} or {{with}} to continue".into()));
            }
            "end" if open.pop().is_none() => return Err((j, "unexpected {{end}}: no block to close".into())),
            _ => {}
        }
        // Skip to the closing delimiter, stepping over quoted text.
        let mut k = word_end;
        while k < b.len() && !b[k..].starts_with(b"}}") {
            match b[k] {
                q @ (b'"' | b'\'') => {
                    k += 1;
                    while k < b.len() && b[k] != q {
                        k += if b[k] == b'\\' { 2 } else { 1 };
                    }
                }
                b'`' => k = find(k + 1, b"`").unwrap_or(b.len()),
                _ => {}
            }
            k += 1;
        }
        i = (k + 2).min(b.len());
    }
    match open.pop() {
        Some((word, at)) => Err((at, format!("unexpected end of the template: {{{{{word}}}}} has no {{{{end}}}}"))),
        None => Ok(()),
    }
}

// ------------------------------------------------------------------ tree passes --

fn walk_lists<'a>(list: &'a ListNode, visit: &mut dyn FnMut(&'a PipeNode)) {
    for node in &list.nodes {
        match node {
            Node::List(l) => walk_lists(l, visit),
            Node::Action(a) => visit(&a.pipe),
            Node::If(b) | Node::Range(b) | Node::With(b) => {
                visit(&b.pipe);
                walk_lists(&b.body, visit);
                if let Some(e) = &b.else_body {
                    walk_lists(e, visit);
                }
            }
            Node::Template(t) => {
                if let Some(p) = &t.pipe {
                    visit(p);
                }
            }
            Node::Define(d) => walk_lists(&d.body, visit),
            Node::Text(_) | Node::Break(_) | Node::Continue(_) => {}
        }
    }
}

fn exprs_of<'a>(pipe: &'a PipeNode, out: &mut Vec<&'a Expr>) {
    for cmd in &pipe.commands {
        for e in &cmd.args {
            out.push(e);
            match e {
                Expr::Pipe(_, p) => exprs_of(p, out),
                Expr::Chain(_, inner, _) => {
                    out.push(inner);
                    if let Expr::Pipe(_, p) = inner.as_ref() {
                        exprs_of(p, out);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Go rejects calls of unknown functions when parsing; so do we (gotmpl would only fail
/// when the call runs). `scratch.Get`-style calls count as known.
fn check_functions(tree: &ListNode, known: &BTreeSet<String>) -> Result<(), (Pos, String)> {
    let mut bad = None;
    walk_lists(tree, &mut |pipe| {
        let mut exprs = Vec::new();
        exprs_of(pipe, &mut exprs);
        for e in exprs {
            if let Expr::Identifier(pos, name) = e
                && !known.contains(name.as_str())
                && bad.is_none()
            {
                bad = Some((*pos, name.to_string()));
            }
        }
    });
    bad.map_or(Ok(()), Err)
}

/// Rewrites method calls into function calls and inserts a position marker before every
/// action, so a runtime error can say where it happened.
fn instrument(list: &mut ListNode) {
    let nodes = std::mem::take(&mut list.nodes);
    for mut node in nodes {
        let pos = match &mut node {
            Node::List(l) => {
                instrument(l);
                None
            }
            Node::Action(a) => {
                rewrite_pipe(&mut a.pipe);
                Some(a.pos)
            }
            Node::If(b) | Node::Range(b) | Node::With(b) => {
                rewrite_pipe(&mut b.pipe);
                instrument(&mut b.body);
                if let Some(e) = &mut b.else_body {
                    instrument(e);
                }
                Some(b.pos)
            }
            Node::Template(t) => {
                if let Some(p) = &mut t.pipe {
                    rewrite_pipe(p);
                }
                Some(t.pos)
            }
            Node::Define(d) => {
                instrument(&mut d.body);
                None
            }
            Node::Text(_) | Node::Break(_) | Node::Continue(_) => None,
        };
        if let Some(pos) = pos {
            list.nodes.push(marker(pos));
        }
        list.nodes.push(node);
    }
}

fn marker(pos: Pos) -> Node {
    let offset = i64::try_from(pos.offset).unwrap_or(i64::MAX);
    Node::Action(ActionNode {
        pos,
        pipe: PipeNode {
            pos,
            decl: Vec::new(),
            commands: vec![CommandNode {
                pos,
                args: vec![Expr::Identifier(pos, AT_FUNC.into()), Expr::Number(pos, Number::Int(offset))],
            }],
            is_assign: false,
        },
    })
}

fn rewrite_pipe(pipe: &mut PipeNode) {
    for (i, cmd) in pipe.commands.iter_mut().enumerate() {
        for e in cmd.args.iter_mut() {
            if let Expr::Pipe(_, p) = e {
                rewrite_pipe(p);
            }
            if let Expr::Chain(_, inner, _) = e
                && let Expr::Pipe(_, p) = inner.as_mut()
            {
                rewrite_pipe(p);
            }
        }
        let has_args = cmd.args.len() > 1 || i > 0;
        let Some(first) = cmd.args.first_mut() else { continue };
        // `scratch.Set "k" "v"`: Go calls the method Set of scratch's result.
        if let Expr::Chain(pos, inner, fields) = first
            && let Expr::Identifier(_, fname) = inner.as_ref()
            && fname.as_str() == "scratch"
            && fields.len() == 1
            && SCRATCH_METHODS.contains(&fields[0].as_str())
        {
            *first = Expr::Identifier(*pos, format!("scratch.{}", fields[0]).as_str().into());
            continue;
        }
        // `.Tags.Contains "x"`: the method of consul-template's ServiceTags.
        if !has_args {
            continue;
        }
        let receiver = match first {
            Expr::Field(pos, path) if path.last().is_some_and(|f| f == "Contains") => {
                let path = path[..path.len() - 1].to_vec();
                Some((*pos, if path.is_empty() { Expr::Dot(*pos) } else { Expr::Field(*pos, path) }))
            }
            Expr::Variable(pos, var, path) if path.last().is_some_and(|f| f == "Contains") => {
                Some((*pos, Expr::Variable(*pos, var.clone(), path[..path.len() - 1].to_vec())))
            }
            _ => None,
        };
        if let Some((pos, receiver)) = receiver {
            cmd.args[0] = Expr::Identifier(pos, CONTAINS_METHOD.into());
            cmd.args.insert(1, receiver);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 99), (2, 2));
    }
}
