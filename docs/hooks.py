"""MkDocs hook: tables generated at build time from the code's registries.

A page asks for a table with an HTML comment holding a marker name and, for
some markers, an argument: `<!-- settings: ogm_ge -->`, `<!-- compatibility -->`.
`on_page_markdown` replaces each comment with Markdown, so every method,
dataset, preset and paper table is declared once, in the code or config, and
the site cannot drift from it. Any other HTML comment, an unknown marker or an
unknown argument stops the build with an error naming the page.

Markers (argument after the colon):
  methods                    the method registry, linked to each method's page
  method: <name>             one method's class, file, needs and description
  settings: <name>           its settings: key, default, allowed values, source
  search-space: <name>       its tuning ranges (SEARCH_SPACE)
  fusions                    the fusion registry: class, decomposition, summary
  compatibility              which method runs on which fusion
  datasets                   the dataset registry, linked to each dataset's page
  dataset: <key>             one registry entry, its classes, counts and preset
  presets                    every preprocessing preset
  paper-tables               every paper table: config, DVC stage, output
  paper: <key>               one paper table: its rows mapped to our cells, notes
  config: <section>          a block of the config schema (e.g. train, tuning)
"""

from __future__ import annotations

import csv
import html
import inspect
import json
import posixpath
import re
from pathlib import Path

import yaml

from mmbalance import papers
from mmbalance.balancers import METHODS, method_class
from mmbalance.compatibility import matrix_markdown
from mmbalance.config import schema
from mmbalance.data import recipes, registry
from mmbalance.models.fusion import FUSIONS, offers

ROOT = Path(__file__).resolve().parents[1]
COMMENT = re.compile(r"<!--(.*?)-->", re.S)
MARKER = re.compile(r"^\s*([a-z-]+)\s*(?::\s*([\w.-]+))?\s*$")


def repo_file(obj) -> str:
    """Path of the file defining `obj`, relative to the repository root."""
    return Path(inspect.getsourcefile(obj)).resolve().relative_to(ROOT).as_posix()


def link(page, target: str, label: str) -> str:
    """A Markdown link from `page` to the docs page `target` (relative to docs/)."""
    return f"[{label}]({posixpath.relpath(target, posixpath.dirname(page.file.src_uri) or '.')})"


def text(value) -> str:
    """Plain text safe inside a table cell (no HTML, pipes, dollars or line breaks)."""
    return html.escape(" ".join(str(value).split()), quote=False).replace("|", "\\|").replace("$", "&#36;")


def plain(value) -> str:
    """A value as it is written in a YAML config."""
    return value if isinstance(value, str) and value else json.dumps(value)


def code(value) -> str:
    return f"`{plain(value)}`".replace("|", "\\|")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


# --- JSON-schema blocks (config sections and method settings) ----------------

DEFS = schema()["$defs"]


def resolve(node: dict) -> dict:
    if "$ref" in node:
        return {**resolve(DEFS[node["$ref"].rsplit("/", 1)[1]]), **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def allowed(node: dict) -> str:
    node = resolve(node)
    if "enum" in node:
        return ", ".join(code(v) for v in node["enum"])
    kinds = node.get("type", "any")
    parts = [" or ".join(kinds) if isinstance(kinds, list) else kinds]
    if kinds == "array" and "items" in node:
        parts = ["list of " + allowed(node["items"])]
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in node:
            parts.append(f"{sign} {node[key]}")
    if "pattern" in node:
        parts.append(f"matching {code(node['pattern'])}")
    return ", ".join(parts)


def leaves(properties: dict, prefix: str = "", inherited: str = ""):
    """(dotted key, node, description) of every leaf; objects with properties are opened."""
    for key, node in properties.items():
        node = resolve(node)
        description = node.get("description", "") or inherited
        if node.get("type") == "object" and node.get("properties"):
            yield from leaves(node["properties"], f"{prefix}{key}.", description)
        else:
            yield f"{prefix}{key}", node, description


def schema_table(properties: dict, prefix: str = "") -> str:
    rows = [[code(key), code(node["default"]) if "default" in node else "—", allowed(node), text(description)]
            for key, node, description in leaves(properties, prefix)]
    if not rows:
        return "*No settings.*\n"
    return table(["key", "default", "allowed", "meaning and source"], rows)


def config_section(section: str, page) -> str:
    full = schema()
    if section in ("dataset", "generator"):
        return schema_table(DEFS[section]["properties"])
    if section not in full["properties"] or section in ("methods", "datasets"):
        raise KeyError(f"config section {section!r}: use one of {sorted(set(full['properties']) - {'methods', 'datasets'})}, dataset or generator")
    node = full["properties"][section]
    return schema_table(node["properties"], f"{section}.") if node.get("properties") else schema_table({section: node})


# --- methods -----------------------------------------------------------------

def methods(page) -> str:
    rows = [[link(page, f"methods/{name}.md", name), code(METHODS[name]), text(method_class(name).DESCRIPTION)] for name in METHODS]
    return table(["method", "registry entry (module:Class)", "description"], rows)


def method(name: str, page) -> str:
    cls = method_class(name)
    needs = ", ".join(sorted(cls.needs({}))) or "nothing (runs on every fusion)"
    heads = "trained into the encoders by the method's loss" if cls.trains_unimodal_heads else "probes on detached features (they do not train the encoders)"
    rows = [["config name", code(name)], ["class", code(f"{cls.__module__}.{cls.__name__}")], ["file", code(repo_file(cls))],
            ["summary", text(cls.DESCRIPTION)], ["modalities", ", ".join(cls.modalities) if cls.modalities else "all"],
            ["needs of a fusion (default settings)", text(needs)], ["unimodal heads", heads]]
    return table(["field", "value"], rows)


def settings(name: str, page) -> str:
    return schema_table(method_class(name).SETTINGS)


def search_space(name: str, page) -> str:
    space = method_class(name).SEARCH_SPACE
    if not space:
        return "*No method-specific range: a study of this method searches only the shared recipe ranges.*\n"
    rows = [[code(key), code(r["low"]), code(r["high"]), "log" if r.get("log") else "linear", r.get("type", "float"), text(r["source"])]
            for key, r in space.items()]
    return table(["setting", "low", "high", "scale", "type", "source"], rows)


def fusions(page) -> str:
    rows = [[code(name), code(f"{cls.__module__}.{cls.__name__}"), ", ".join(sorted(offers(name))) or "—",
             text(inspect.getdoc(cls).split("\n\n")[0])] for name, cls in FUSIONS.items()]
    return table(["fusion", "class", "offers", "what it computes"], rows)


def compatibility(page) -> str:
    return matrix_markdown(list(METHODS), {})


# --- datasets ----------------------------------------------------------------

def dataset_page(key: str) -> str:
    """Datasets that share a raw download share a page (CREMA-D's two protocols)."""
    return f"datasets/{registry.entry(key).raw}.md"


def datasets(page) -> str:
    rows = [[link(page, dataset_page(key), key), code(e.raw), code(e.protocol), code(e.preset), code(e.max_skipped_fraction),
             code(e.published_protocol), text(e.description)] for key, e in registry.DATASETS.items()]
    return table(["key", "raw folder", "protocol", "preset", "max skipped", "published protocol", "description"], rows)


def counts(value) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{'fold ' if isinstance(k, int) else ''}{k}: {counts(v)}" for k, v in value.items())
    if isinstance(value, tuple):
        return " / ".join("carved" if v is None else f"{v:,}" for v in value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def dataset(key: str, page) -> str:
    entry, module = registry.entry(key), registry.module(key)
    expected = getattr(module, "EXPECTED_COUNTS", {})
    expected = {} if registry.is_generated(key) else expected.get(entry.protocol, expected)
    recipe = ", ".join(code(f"{k}: {plain(v)}") for k, v in recipes.resolve({"preset": entry.preset}).items() if k != "preset")
    rows = [["config key", code(key)], ["module", code(repo_file(module))], ["raw folder", code(f"resources/raw/{entry.raw}/")],
            ["protocol", code(entry.protocol)], ["classes", str(len(module.CLASSES))],
            ["counts the catalog checks", text(counts(expected)) if expected else "generated: set by the generator"],
            ["default preset", code(entry.preset)], ["which resolves to", recipe],
            ["max_skipped_fraction", code(entry.max_skipped_fraction)],
            ["published numbers' protocol", code(entry.published_protocol)], ["description", text(entry.description)]]
    return table(["field", "value"], rows)


def presets(page) -> str:
    keys = list(dict.fromkeys(k for p in recipes.PRESETS.values() for k in recipes.DEFAULTS | p))
    rows = [[code(name)] + [code(recipe[k]) if k in recipe else "" for k in keys]
            for name, recipe in ((n, recipes.resolve({"preset": n})) for n in recipes.PRESETS)]
    return table(["preset"] + keys, rows)


# --- papers ------------------------------------------------------------------

SPECS = papers.load_specs(ROOT / "config" / "paper_tables.yaml")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["grid"]["foreach"]


def paper_facts(key: str) -> tuple[str, str, str]:
    """(config file, DVC command, output file) of a paper table; raises if its DVC stage is missing."""
    if key not in SPECS:
        raise KeyError(f"paper table {key!r} is not in config/paper_tables.yaml: {sorted(SPECS)}")
    spec = SPECS[key]
    stem = Path(spec.config).stem
    if stem not in STAGES:
        raise KeyError(f"{spec.config} has no grid@{stem} stage in dvc.yaml")
    results = yaml.safe_load((ROOT / spec.config).read_text())["results"]
    return spec.config, f"dvc repro grid@{stem}", f"{results}/tables/papers/{key}.md"


def paper_tables(page) -> str:
    rows = [[code(key), text(f"{s.paper}, {s.table}"), *map(code, paper_facts(key))] for key, s in SPECS.items()]
    return table(["key", "paper and table", "config", "command", "output"], rows)


def describe(cell) -> str:
    if cell.key is None:
        return "missing: " + text(cell.missing)
    return " · ".join(code(cell.key[f]) for f in ("method", "fusion", "variant", "backbone"))


def paper(key: str, page) -> str:
    config, command, output = paper_facts(key)
    spec = SPECS[key]
    with open(ROOT / "config" / "published.csv", newline="") as handle:
        printed = sum(r["paper"] == spec.paper and r["table"] == spec.table for r in csv.DictReader(handle))
    facts = table(["field", "value"], [
        ["paper, table", text(f"{spec.paper}, {spec.table}")], ["what it shows", text(spec.caption)],
        ["config", code(config)], ["regenerate", code(command)], ["output", code(output)],
        ["columns", ", ".join(text(c["label"]) for c in spec.columns)],
        ["published numbers in config/published.csv", str(printed)]])
    cells = spec.spec_cells()
    rows = []
    for row in spec.rows:
        mine = [c for c in cells if c.row == row["label"]]
        distinct = list(dict.fromkeys(describe(c) for c in mine))
        rows.append([text(row["label"]), distinct[0] if len(distinct) == 1 else "; ".join(f"{text(c.column)}: {describe(c)}" for c in mine)])
    notes = "\n".join(f"- {text(note)}" for note in spec.notes)
    return (facts + "\nEach printed row and the cell of our grid behind it (method · fusion · variant · backbone):\n\n"
            + table(["row", "our cell"], rows) + "\nNotes kept with the table's layout (`config/paper_tables.yaml`):\n\n" + notes + "\n")


# --- the hook ------------------------------------------------------------------

WITH_ARGUMENT = {"method": method, "settings": settings, "search-space": search_space, "dataset": dataset, "paper": paper,
                 "config": config_section}
WITHOUT_ARGUMENT = {"methods": methods, "fusions": fusions, "compatibility": compatibility, "datasets": datasets, "presets": presets,
                    "paper-tables": paper_tables}


def render(comment: str, page) -> str:
    match = MARKER.match(comment)
    name, argument = match.groups() if match else (None, None)
    if name in WITH_ARGUMENT and argument:
        try:
            return WITH_ARGUMENT[name](argument, page)
        except (KeyError, ValueError) as error:
            raise ValueError(f"{page.file.src_uri}: marker <!--{comment}-->: {error}") from error
    if name in WITHOUT_ARGUMENT and not argument:
        return WITHOUT_ARGUMENT[name](page)
    raise ValueError(f"{page.file.src_uri}: unknown marker <!--{comment}-->; markers with an argument: "
                     f"{sorted(WITH_ARGUMENT)}, without: {sorted(WITHOUT_ARGUMENT)}")


def on_page_markdown(markdown: str, page, config, files) -> str:
    return COMMENT.sub(lambda m: render(m.group(1), page), markdown)
