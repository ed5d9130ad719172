#!/usr/bin/env python3
"""Checks the code's shape rules (issue 13): no source file over 600 lines outside tests,
no non-test function over 80 lines (data tables excepted by a `// shape: table` comment on
the line before the function), and no import cycle between the files of a crate.

Usage: scripts/shape.py [--report]   (exit 1 with a list of violations, 0 when clean)
Test code is what follows a `#[cfg(test)]` module at the end of a file, and files under
tests/ or benches/ directories.
"""
import os
import re
import sys
from collections import defaultdict

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MAX_FILE = 600
MAX_FN = 80
SKIP_DIRS = {"target", ".git", "fuzz", "node_modules"}


def rust_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        rel = os.path.relpath(dirpath, ROOT)
        parts = rel.split(os.sep)
        if "tests" in parts or "benches" in parts:
            continue
        for f in filenames:
            if f.endswith(".rs") and f != "tests.rs":
                yield os.path.join(dirpath, f)


def non_test_lines(lines):
    """The lines before the file's `#[cfg(test)] mod ... {` block."""
    for i, line in enumerate(lines):
        if line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r"\s*mod \w+", lines[i + 1]):
            if not lines[i].startswith(" "):
                return lines[:i]
    return lines


FN_RE = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def long_functions(lines):
    out = []
    i = 0
    while i < len(lines):
        m = FN_RE.match(lines[i])
        if not m:
            i += 1
            continue
        indent = m.group(1)
        name = m.group(7)
        table = i > 0 and "shape: table" in lines[i - 1]
        # find the opening brace and the matching close at the same indentation
        j = i
        while j < len(lines) and "{" not in lines[j] and not lines[j].rstrip().endswith(";"):
            j += 1
        if j >= len(lines) or lines[j].rstrip().endswith(";"):
            i = j + 1
            continue
        end = j
        close = indent + "}"
        while end < len(lines) and not (lines[end].rstrip() == close or (end == j and lines[j].rstrip().endswith("}"))):
            end += 1
        length = end - i + 1
        if length > MAX_FN and not table:
            out.append((i + 1, name, length))
        i += 1
    return out


USE_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+(crate|super)::([\w:]+|\{)")


def module_path(path, crate_root):
    rel = os.path.relpath(path, crate_root)[: -len(".rs")]
    parts = rel.split(os.sep)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return tuple(parts)


def crate_root_of(path):
    d = os.path.dirname(path)
    while d != ROOT and d != "/":
        if os.path.basename(d) == "src":
            return d
        d = os.path.dirname(d)
    return None


def cycles(files):
    """Import cycles between files (modules) of one crate, from `use crate::`/`use super::`."""
    by_crate = defaultdict(dict)
    for path, lines in files.items():
        root = crate_root_of(path)
        if root is None:
            continue
        by_crate[root][module_path(path, root)] = (path, lines)
    found = []
    for root, mods in by_crate.items():
        graph = defaultdict(set)
        for mod, (path, lines) in mods.items():
            for line in non_test_lines(lines):
                m = USE_RE.match(line)
                if not m:
                    continue
                kind, rest = m.groups()
                tail = [p for p in rest.split("::") if p and p != "{"]
                # `super::` from module a::b (file a/b.rs or a/b/mod.rs) names module a.
                base = () if kind == "crate" else mod[:-1]
                # the longest prefix of base+tail that is a module of this crate
                target = None
                cand = base + tuple(tail)
                for k in range(len(cand), -1, -1):
                    if cand[:k] in mods:
                        target = cand[:k]
                        break
                if target is None or target == mod:
                    continue
                # importing from an ancestor module (lib.rs re-exports) is not an edge
                if mod[: len(target)] == target:
                    continue
                graph[mod].add(target)
        # find cycles (Tarjan's SCC)
        index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

        def strong(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in graph[v]:
                if w not in index:
                    strong(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    sccs.append(comp)

        for v in list(graph):
            if v not in index:
                strong(v)
        for comp in sccs:
            names = sorted(os.path.relpath(mods[m][0], ROOT) for m in comp)
            found.append(names)
    return found


def main():
    files = {}
    for path in sorted(rust_files()):
        with open(path, encoding="utf-8") as f:
            files[path] = f.read().split("\n")
    problems = []
    for path, lines in files.items():
        rel = os.path.relpath(path, ROOT)
        body = non_test_lines(lines)
        if len(body) > MAX_FILE:
            problems.append(f"{rel}: {len(body)} lines outside tests (limit {MAX_FILE}): split it by job")
        for line, name, length in long_functions(body):
            problems.append(f"{rel}:{line}: fn {name} is {length} lines (limit {MAX_FN}): split it")
    for names in cycles(files):
        problems.append("import cycle between " + ", ".join(names))
    for p in problems:
        print(p)
    if problems:
        print(f"\n{len(problems)} shape problem(s)", file=sys.stderr)
        return 1
    print(f"shape: {len(files)} files, none over {MAX_FILE} lines, no function over {MAX_FN}, no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
