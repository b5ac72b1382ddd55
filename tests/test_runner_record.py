"""run-labs' record and the README table regenerated from it."""

from __future__ import annotations

import pytest

from labkit.errors import LabkitError
from labkit.runner import (
    README_BEGIN,
    README_END,
    LabResult,
    machine_label,
    results_record,
    update_readme,
)


def test_the_record_names_the_machine_and_each_lab():
    record = results_record([LabResult("00_start_here", "ok", 12.5, 480.0, "", 11.2)], "cpu")
    assert record["profile"] == "cpu" and "torch CPU kernels" in record["machine"]
    assert record["machine"] == machine_label()
    assert record["labs"][0]["lab"] == "00_start_here" and record["labs"][0]["cpu_s"] == 11.2


def test_update_readme_rewrites_only_the_table_and_keeps_the_descriptions(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        f"intro\n{README_BEGIN}\n| lab | concept | file | what you will see | CPU s |\n|---|---|---|---|---|\n"
        "| 00 | start here | [labs/00_start_here.ipynb](labs/00_start_here.ipynb) | the check | 99 |\n"
        f"{README_END}\noutro\n")
    record = results_record([LabResult("00_start_here", "ok", 12.5, 2048.0, "", 11.2)], "cpu")
    update_readme(readme, record)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    row = next(line for line in text.splitlines() if line.startswith("| 00 |"))
    assert row == ("| 00 | start here | [labs/00_start_here.ipynb](labs/00_start_here.ipynb) | the check "
                   "| 11 | 12 | 2.0 GiB |")
    assert record["machine"] in text
    update_readme(readme, record)  # idempotent
    assert readme.read_text() == text


def test_update_readme_refuses_a_readme_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no table here\n")
    with pytest.raises(LabkitError, match="markers"):
        update_readme(readme, results_record([], "cpu"))
