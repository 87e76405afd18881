#!/usr/bin/env python3
"""Render Shoal's WIT package (wit/*.wit) and its doc comments as sdk/wit-reference.md.

    python3 sdk/wit-reference.py           # rewrite sdk/wit-reference.md
    python3 sdk/wit-reference.py --check   # fail if sdk/wit-reference.md is out of date

The parser knows the subset of WIT the package uses (interfaces, worlds, records, enums,
variants, resources, functions, `use`), one declaration per line, doc comments as `///`.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "sdk" / "wit-reference.md"
FILES = ["types.wit", "worlds.wit"]


def parse(text):
    """Top-level items: dicts with kind, name, doc, and members."""
    items, stack, doc = [], [], []
    package = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("///"):
            doc.append(line[3:].strip())
            continue
        if not line or line.startswith("//"):
            continue
        if line.startswith("package "):
            package = line[len("package "):].rstrip(";")
            doc = []
            continue
        m = re.match(r"(interface|world|record|enum|variant|resource)\s+([\w-]+)\s*\{$", line)
        if m:
            node = {"kind": m.group(1), "name": m.group(2), "doc": doc, "members": []}
            (stack[-1]["members"] if stack else items).append(node)
            stack.append(node)
            doc = []
            continue
        if line == "}":
            stack.pop()
            doc = []
            continue
        parent = stack[-1] if stack else None
        if parent is None:
            doc = []
            continue
        if line.startswith(("use ", "import ", "export ")):
            parent["members"].append({"kind": line.split()[0], "name": line.split(None, 1)[1].rstrip(";"), "doc": doc})
        elif re.match(r"[\w-]+:\s*func", line):
            name, sig = line.rstrip(";").split(":", 1)
            parent["members"].append({"kind": "func", "name": name, "sig": sig.strip(), "doc": doc})
        elif parent["kind"] == "record":
            name, ty = line.rstrip(",").split(":", 1)
            parent["members"].append({"kind": "field", "name": name.strip(), "type": ty.strip(), "doc": doc})
        elif parent["kind"] in ("enum", "variant"):
            case = line.rstrip(",")
            name, _, payload = case.partition("(")
            parent["members"].append({"kind": "case", "name": name, "type": payload.rstrip(")"), "doc": doc})
        doc = []
    return package, items


def para(doc):
    """Doc lines as one line, for table cells and list items."""
    return " ".join(line for line in doc if line).replace("|", "\\|")


def block(doc):
    """Doc lines as Markdown paragraphs (a blank `///` line separates them)."""
    return "\n".join(doc).strip() + "\n"


def render_type(node, out, level):
    h = "#" * level
    out.append(f"{h} {node['kind']} `{node['name']}`\n")
    if node["doc"]:
        out.append(block(node["doc"]))
    if node["kind"] == "record":
        out.append("| field | type | meaning |\n| --- | --- | --- |")
        for f in node["members"]:
            out.append(f"| `{f['name']}` | `{f['type']}` | {para(f['doc'])} |")
        out.append("")
    elif node["kind"] in ("enum", "variant"):
        out.append("| case | payload | meaning |\n| --- | --- | --- |")
        for c in node["members"]:
            payload = f"`{c['type']}`" if c["type"] else ""
            out.append(f"| `{c['name']}` | {payload} | {para(c['doc'])} |")
        out.append("")
    elif node["kind"] == "resource":
        for f in node["members"]:
            render_func(f, out)
        out.append("")


def render_func(f, out):
    out.append(f"- `{f['name']}: {f['sig']}`" + (f" — {para(f['doc'])}" if f["doc"] else ""))


def render(package, items):
    out = [
        f"# WIT reference: `{package}`\n",
        "Generated from `wit/*.wit` by `python3 sdk/wit-reference.py`; do not edit by hand (the SDK",
        "tests fail when this file and the WIT disagree). Names are WIT's kebab-case: Rust and Python",
        "use snake_case (`mem_mb`), JavaScript camelCase (`memMb`), C `snake_case` with the interface",
        "as prefix (`shoal_plugin_types_resources_t`). Fixtures of `shoal plugin check` use snake_case.\n",
    ]
    worlds = [i for i in items if i["kind"] == "world"]
    interfaces = [i for i in items if i["kind"] == "interface"]
    out.append("## Worlds: one per plugin kind\n")
    out.append("| world | exports | imports | meaning |\n| --- | --- | --- | --- |")
    for w in worlds:
        exports = ", ".join(f"`{m['name']}`" for m in w["members"] if m["kind"] == "export")
        imports = ", ".join(f"`{m['name']}`" for m in w["members"] if m["kind"] == "import")
        out.append(f"| `{w['name']}` | {exports or '—'} | {imports} | {para(w['doc'])} |")
    out.append("")
    out.append("Besides these imports, the host links the standard WASI 0.2 interfaces with nothing")
    out.append("behind them (no files, no environment, no sockets; stdout and stderr are discarded), so")
    out.append("language runtimes that expect WASI (Python, JavaScript, Rust's std) load unchanged.\n")
    for i in interfaces:
        out.append(f"## interface `{i['name']}`\n")
        if i["doc"]:
            out.append(block(i["doc"]))
        uses = [m["name"] for m in i["members"] if m["kind"] == "use"]
        if uses:
            out.append("Uses " + ", ".join(f"`{u}`" for u in uses) + ".\n")
        funcs = [m for m in i["members"] if m["kind"] == "func"]
        if funcs:
            out.append("Functions:\n")
            for f in funcs:
                render_func(f, out)
            out.append("")
        for t in i["members"]:
            if t["kind"] in ("record", "enum", "variant", "resource"):
                render_type(t, out, 3)
    return "\n".join(out).rstrip() + "\n"


def main():
    package, items = None, []
    for name in FILES:
        pkg, its = parse((ROOT / "wit" / name).read_text())
        package = package or pkg
        items.extend(its)
    text = render(package, items)
    if sys.argv[1:] == ["--check"]:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"{OUT} is out of date: run python3 sdk/wit-reference.py")
        return
    OUT.write_text(text)


if __name__ == "__main__":
    main()
