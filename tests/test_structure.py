"""The package's shape stays walkable (issue 27): the storage floor imports nothing of the
package, no import runs up a layer or closes a cycle (function-level imports included), no
function body grows past 60 lines, and only ``logo_train.layout`` spells the run folder's
paths."""

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import code_structure  # noqa: E402


def test_no_cycle_and_no_import_up_a_layer():
    shape = code_structure.analyse(ROOT)
    assert shape["cycles_with_function_imports"] == []
    assert shape["arrows_up"] == []


def test_the_storage_floor_imports_nothing_of_the_package():
    for module in ("storage", "layout"):
        tree = ast.parse((ROOT / f"logo_train/{module}.py").read_text())
        imported = [
            n.module
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("logo_train")
        ]
        assert imported in ([], ["logo_train.storage"]), (module, imported)


def test_no_function_body_over_60_lines():
    assert code_structure.analyse(ROOT)["bodies_over_60_lines"] == []


def test_the_analysis_sees_a_cycle_and_a_long_function(tmp_path):
    """The checks above can fail: a package with a function-level import cycle and a long
    function is reported."""
    package = tmp_path / "logo_train"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from logo_train import b\n")
    long_body = "".join(f"    x{i} = {i}\n" for i in range(61))
    (package / "b.py").write_text(f"def f():\n    from logo_train import a\n{long_body}")
    shape = code_structure.analyse(tmp_path)
    assert shape["cycles_with_function_imports"] == ["logo_train.a <-> logo_train.b"]
    assert shape["arrows_up"] == ["logo_train.b -> logo_train.a"]
    assert [line.split()[-1] for line in shape["bodies_over_60_lines"]] == ["logo_train.b.f"]


FOLDERS = r"(?:train|clean|audit|tensorboard|report|tune|data|config\.yaml)"
RUN_PATHS = re.compile(
    # a run folder's path built in code: join(run, "train/summary.json"), run / "report"
    rf"""join\([^,()]+,\s*f?["']{FOLDERS}(?:/[^"']*)?["']|\s/\s*["']{FOLDERS}["']"""
)


def test_only_the_layout_module_spells_run_folder_paths():
    spelled = {}
    for path in sorted((ROOT / "logo_train").rglob("*.py")):
        if path.name == "layout.py" or path.parent.name == "data":
            continue  # data/ names the folders of an input ImageFolder, not of a run
        hits = RUN_PATHS.findall(path.read_text())
        if hits:
            spelled[str(path.relative_to(ROOT))] = hits
    assert spelled == {}
