"""Repository conventions: notebooks stripped, badges right, Binder pins = constraints, manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from labkit.yourmodel import CELLS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LABS = sorted((ROOT / "labs").glob("[0-9][0-9]_*.ipynb"))
URLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[name.lower().replace("_", "-")] = version.split(";")[0].strip()
    return pins


def test_there_are_labs():
    assert LABS and LABS[0].name == "00_start_here.ipynb"


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.name)
def test_notebook_is_committed_stripped_but_for_checked_outputs(path):
    """Outputs are stripped, except the text of `# NBVAL_CHECK_OUTPUT` cells: the reference
    nbval compares a fresh run against (written by `labkit run-labs --pin`)."""
    from labkit.runner import CHECK_MARK

    nb = nbformat.read(path, as_version=4)
    number = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        number += 1
        pinned = CHECK_MARK in cell.source
        assert cell.execution_count == (number if pinned else None), (
            f"{path.name} cell {i}: execution count {cell.execution_count}; "
            f"expected {number if pinned else None}")
        if pinned:
            assert cell.outputs, f"{path.name} cell {i} is checked but has no pinned output: run `labkit run-labs --only {path.name[:2]} --pin`"
            for out in cell.outputs:
                assert out.output_type in ("stream", "execute_result"), f"{path.name} cell {i}: only text is pinned"
                if out.output_type == "execute_result":
                    assert set(out.data) == {"text/plain"}
        else:
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them"


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.name)
def test_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# Lab "), "title first"
    badge = f"{URLS['Colab']}/labs/{path.name}"
    assert badge in first.source, f"Colab badge must point at {badge}"
    assert "mybinder.org" in first.source
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "google.colab" in code[0], "the first code cell is the Colab set-up cell"
    assert URLS["Repository"] in code[0], "the set-up cell clones the project's repository"
    assert any("labkit.profile()" in c for c in code), "labs read their sizes from the profile"
    assert nb.cells[-1].cell_type == "markdown" and "Summary" in nb.cells[-1].source


def test_colab_badges_point_at_existing_files():
    for path in [ROOT / "README.md", *LABS]:
        for link in re.findall(r"colab\.research\.google\.com/github/[^)\s\"']+", path.read_text()):
            target = link.split("/blob/main/", 1)[1]
            assert (ROOT / target).exists(), f"{path.name} links {target}, which does not exist"
            assert f"https://{link}".startswith(URLS["Colab"])


def test_binder_pins_agree_with_constraints():
    binder = _pins(ROOT / "binder" / "requirements.txt")
    tested = _pins(ROOT / "constraints.txt")
    assert binder, "binder/requirements.txt pins nothing"
    for name, version in binder.items():
        assert tested.get(name) == version, f"binder pins {name}=={version}, constraints {tested.get(name)}"
    assert set(tested) <= set(binder), f"binder misses {sorted(set(tested) - set(binder))[:5]}"


def test_constraints_cover_every_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tested = _pins(ROOT / "constraints.txt")
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    from packaging.requirements import Requirement

    for dep in deps:
        req = Requirement(dep)
        if req.marker is not None and not req.marker.evaluate():
            continue  # e.g. tomli, only on Python 3.10
        name = req.name.lower().replace("_", "-")
        assert name in tested, f"{name} is a dependency but has no tested version in constraints.txt"


def test_readme_quick_start_is_two_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()]
    assert [c.split("#")[0].strip() for c in commands] == ["make lab", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_manifest_lists_every_data_file_with_its_hash():
    from labkit.world.build import sha256

    root = ROOT / "data_samples"
    manifest = json.loads((root / "MANIFEST.json").read_text())["files"]
    # lm-eval imports the task's knowledge_data.py: its bytecode cache is no data file
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*")
               if p.is_file() and p.name != "MANIFEST.json" and "__pycache__" not in p.parts}
    assert on_disk == set(manifest), f"unlisted: {sorted(on_disk - set(manifest))[:5]}, missing: {sorted(set(manifest) - on_disk)[:5]}"
    for rel, entry in manifest.items():
        path = root / rel
        assert path.stat().st_size == entry["size"], rel
        assert sha256(path) == entry["sha256"], f"{rel} changed without a manifest update"
        assert entry["command"].startswith("labkit "), rel
    total = sum(e["size"] for e in manifest.values())
    assert total <= 30 * 2**20, f"data_samples holds {total / 2**20:.1f} MiB; the budget is 30 MiB"


def test_no_unsafe_loading_in_code():
    bad = []
    for path in list((ROOT / "labkit").rglob("*.py")) + list((ROOT / "widgets").rglob("*.py")) + LABS:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "trust_remote_code=True" in line.replace(" ", "") or "pickle.load(" in line:
                bad.append(f"{path.name}:{n}")
            if "torch.load(" in line and "weights_only=True" not in line:
                bad.append(f"{path.name}:{n}")
    assert not bad, f"unsafe loading at {bad}"


def test_labkit_never_imports_ipywidgets():
    offenders = [p.name for p in (ROOT / "labkit").rglob("*.py")
                 if re.search(r"^\s*(import|from)\s+ipywidgets", p.read_text(), re.M)]
    assert not offenders, f"labkit computes, widgets show: {offenders} import ipywidgets"


def _statements(code: str) -> list[str]:
    """The lines of `code` that are not part of an import (a notebook may wrap imports)."""
    lines, depth, importing = [], 0, False
    for line in code.splitlines():
        stripped = line.strip()
        if depth == 0:
            importing = stripped.startswith(("import ", "from "))
        depth += stripped.count("(") - stripped.count(")")
        if stripped and not importing:
            lines.append(stripped)
    return lines


@pytest.mark.parametrize("lab", sorted(CELLS))
def test_lab_shows_labkit_yourmodel_cell(lab):
    """The "Your own model" cell in the lab runs the code tests/test_standard_models.py tests:
    labkit.yourmodel.CELLS[lab], line for line (imports may be wrapped differently)."""
    path = next(p for p in LABS if p.name.startswith(lab + "_"))
    nb = nbformat.read(path, as_version=4)
    want = _statements(CELLS[lab].code)
    assert want, lab
    best = max((sum(line in {s.strip() for s in c.source.splitlines()} for line in want), i)
               for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert best[0] == len(want), f"{path.name}: no code cell holds CELLS[{lab!r}]'s code"
    source = nb.cells[best[1]].source
    for name in CELLS[lab].inputs:
        assert re.search(rf"^\s*{name} = ", source, re.M), f"{path.name}: input {name} not set"
    assert re.search(r"^RUN_OWN_\w+ = False", source, re.M), "off unless the learner turns it on"
    title = nb.cells[best[1] - 1]
    assert title.cell_type == "markdown" and title.source.startswith(f"## {CELLS[lab].title}")


def test_browser_test_javascript_parses(tmp_path):
    """The browser tests' JavaScript lives in Python strings, where a "\\n" becomes a line
    break inside a JS string literal: every snippet must still parse (node --check)."""
    import importlib.util
    import shutil
    import subprocess

    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed")
    spec = importlib.util.spec_from_file_location(
        "browser_js", ROOT / "tests" / "browser" / "test_labs_in_browser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    snippets = {name: value for name, value in vars(module).items()
                if name.startswith("JS_") and isinstance(value, str)}
    assert len(snippets) >= 5
    for name, source in snippets.items():
        path = tmp_path / f"{name}.js"
        path.write_text(f"const f = {source};\n")
        done = subprocess.run([node, "--check", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, f"{name} is not valid JavaScript:\n{done.stderr[-800:]}"
