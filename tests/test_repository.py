"""Repository conventions: notebooks stripped, badges right, Binder pins = constraints, manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

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
