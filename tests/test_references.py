"""Every reference inside the repository points to a file inside it (or to a public
source): a reader who clones the repository can follow each one.

Checked in every tracked text file:
* a notes file named anywhere (`NOTES.md`, capitalised as notes are) exists in the repository;
* a repository path (`src/...`, `config/...`, `workflow/...`, `docs/...`, `tests/...`,
  `benchmarks/...`, `profiles/...`) or package path (`mmbalance/...`) exists;
* a dotted module name (`mmbalance.data.catalog`) is a module or an attribute of one;
* a relative Markdown link `[text](path)` resolves from its file;
* no relative path (`../<folder>`) leads out of the repository.
Paths the workflow generates (`results/`, `logs/`, `benchmarks/`, `resources/raw/`) and patterns
(`{dataset}`, `<key>`, `*`) are not files and are not checked.
"""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = (".py", ".md", ".yaml", ".yml", ".smk", ".csv", ".toml", ".cfg", ".txt", ".sh", ".html", ".json")
TOP_LEVEL = ("src", "config", "workflow", "docs", "tests", "profiles")

NOTE_NAME = re.compile(r"(?<![\w/.-])([A-Z][\w.-]*\.md)\b")  # README.md, NOTES.md: notes, not outputs
REPO_PATH = re.compile(r"(?<![\w/.:-])((?:%s)/[\w./-]*\w)" % "|".join(TOP_LEVEL))
PACKAGE_PATH = re.compile(r"(?<![\w/.-])(mmbalance/[\w./-]*\w)")
MODULE = re.compile(r"(?<![\w/.-])(mmbalance(?:\.\w+)+)")
MD_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
RELATIVE = re.compile(r"(?<![\w.])((?:\.\./)+[\w-]+)")


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sorted({ROOT / name for name in listed if name.endswith(TEXT) and (ROOT / name).is_file()})


FILES = tracked_files()
NAMES = {path.name for path in FILES}
SELF = Path(__file__).resolve()


def concrete(reference: str) -> bool:
    return not any(mark in reference for mark in "{}<>*$") and "..." not in reference


def module_exists(dotted: str) -> bool:
    """`mmbalance.a.b` is a module, or `mmbalance.a` a module with attribute `b` (and so on)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as error:
            attempt = ".".join(parts[:cut])
            if error.name and not (attempt + ".").startswith(error.name + "."):
                raise  # the module exists but an import inside it is broken
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


def broken_references(path: Path, text: str | None = None) -> list[str]:
    if text is None:
        text = path.read_text(encoding="utf-8", errors="replace")
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = re.sub(r"https?://\S+|file://\S+", "", line)  # public addresses are not repository files
        where = f"{path.relative_to(ROOT)}:{number}"
        found += [f"{where}: {m} is not in the repository" for m in NOTE_NAME.findall(line) if m not in NAMES]
        for reference in REPO_PATH.findall(line):
            if concrete(reference) and not (ROOT / reference.rstrip(".")).exists():
                found.append(f"{where}: {reference} does not exist")
        for reference in PACKAGE_PATH.findall(line):
            if concrete(reference) and not (ROOT / "src" / reference.rstrip(".")).exists():
                found.append(f"{where}: {reference} does not exist under src/")
        for reference in MODULE.findall(line):
            if not module_exists(reference):
                found.append(f"{where}: {reference} is not a module or attribute of mmbalance")
        if path.suffix == ".md":
            for target in MD_LINK.findall(line):
                if concrete(target) and "://" not in target and not target.startswith("mailto:"):
                    if not (path.parent / target).exists():
                        found.append(f"{where}: link {target} does not resolve")
        for reference in RELATIVE.findall(line) if path.parent.name != "tests" else ():  # tests build hostile paths
            if not (path.parent / reference).resolve().is_relative_to(ROOT):
                found.append(f"{where}: {reference} points outside the repository")
    return found


@pytest.mark.parametrize("path", [p for p in FILES if p != SELF], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_reference_resolves_inside_the_repository(path):
    assert broken_references(path) == []


def test_the_checker_catches_what_it_should():
    probe = ROOT / "docs" / "_reference_probe.md"
    problems = broken_references(probe, (
        "see NOTES.md 4.2 and [the guide](nowhere.md), `src/mmbalance/nowhere.py`, mmbalance.nowhere.thing,\n"
        "../../elsewhere/papers/ and mmbalance/data/nowhere.py; fine: README.md, `config/config.yaml`, mmbalance.config.validate,\n"
        "mmbalance.config.Experiment.settings, results/runs/{dataset}/, https://example.org/GUIDE.md\n"))
    assert [p.split(": ", 1)[1] for p in problems] == [
        "NOTES.md is not in the repository",
        "src/mmbalance/nowhere.py does not exist",
        "mmbalance.nowhere.thing is not a module or attribute of mmbalance",
        "link nowhere.md does not resolve",
        "mmbalance/data/nowhere.py does not exist under src/",
        "../../elsewhere points outside the repository",
    ]
