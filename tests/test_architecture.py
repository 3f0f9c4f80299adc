"""The architecture the docs describe is the one the code has.

Three checks: the import contracts in ``pyproject.toml`` hold (``lint-imports``) and catch a
core module importing MLflow, a database driver or the CLI; every module has a row in
``docs/architecture.md`` and imports only what its row allows; no module grows past the size a
newcomer can read (steps and the CLI under 400 lines, the rest under 800 but the simulator and
the TreeSHAP engine).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "convert"
DOC = ROOT / "docs" / "architecture.md"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

#: Modules allowed past 800 lines: generated-data richness and a numba kernel, each one concept.
LARGE_MODULES = {"convert.simulator.crm", "convert.model.treeshap"}


def _lint_imports(src: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}  # before site-packages: the copy wins over the install
    return subprocess.run([str(LINT_IMPORTS), str(config), "--no-cache"],
                          capture_output=True, text=True, env=env, cwd=config.parent, timeout=300)


def test_import_contracts_hold() -> None:
    result = _lint_imports(ROOT / "src", ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("features/engine.py", "import mlflow", "never import the CLI, MLflow"),
        ("model/explain.py", "import psycopg", "never import the CLI, MLflow"),
        ("scoring/score.py", "import sqlalchemy", "never import the CLI, MLflow"),
        ("model/train.py", "from convert import cli", "a stage never calls back up"),
        ("features/labels.py", "from convert.io import urls", "reach none of them even indirectly"),
    ],
)
def test_import_contracts_catch_a_core_module_reaching_out(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "convert", ignore=shutil.ignore_patterns("__pycache__"))
    target = src / "convert" / module
    target.write_text(target.read_text() + f"\n{line}  # injected by the test\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    result = _lint_imports(src, tmp_path / "pyproject.toml")
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken, result.stdout


def _documented() -> dict[str, set[str] | None]:
    """Rows of the doc's module table: module -> allowed imports (None: anything)."""
    rows: dict[str, set[str] | None] = {}
    for raw in DOC.read_text().splitlines():
        cells = [c.strip() for c in raw.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"`[\w.]+`", cells[0]):
            continue
        name = cells[0].strip("`")
        module = "convert" if name == "convert" else f"convert.{name}"
        allowed_text = re.sub(r"\([^)]*\)", "", cells[2]).strip()
        if allowed_text == "everything":
            rows[module] = None
            continue
        allowed = {a.strip().strip("`") for a in allowed_text.split(",")} - {"-", ""}
        rows[module] = {f"convert.{a}" for a in allowed}
    return rows


def test_every_module_has_a_row_and_imports_only_what_it_allows() -> None:
    graph = grimp.build_graph("convert")
    rows = _documented()
    modules = {m for m in graph.modules if m.startswith("convert")}
    missing = sorted(modules - rows.keys())
    assert not missing, f"modules without a row in {DOC.name}: {missing}"
    stale = sorted(rows.keys() - modules)
    assert not stale, f"rows in {DOC.name} for modules that do not exist: {stale}"
    wrong = []
    for module in sorted(modules):
        allowed = rows[module]
        if allowed is None:
            continue
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if not imported.startswith("convert") or imported == module:
                continue
            if not any(imported == a or imported.startswith(a + ".") for a in allowed):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, f"imports that {DOC.name} does not allow:\n" + "\n".join(wrong)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_modules_stay_readable() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "convert." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        limit = 400 if module.startswith(("convert.steps", "convert.cli")) else 800
        if module not in LARGE_MODULES and _lines(path) > limit:
            too_long.append(f"{module}: {_lines(path)} lines (limit {limit})")
    assert not too_long, "\n".join(too_long)
