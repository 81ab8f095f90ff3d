"""The import rules of docs/architecture.md, checked on the source tree (ast, no import):
layers import no model; a family imports no sibling family; presets.py imports no model;
serving and tfrecords_tools import no tfbrain model; the trainer, evaluation, attribution,
export and the CLI name no family. And `tfbrain --help` does not import TensorFlow."""

import ast
import os
import subprocess
import sys

from tests.test_case import REPO_ROOT

FAMILY_DIRS = sorted(p.name for p in (REPO_ROOT / "tfbrain" / "models").iterdir()
                     if p.is_dir() and (p / "__init__.py").exists())


def imports_of(path):
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [(node.lineno, node.module)]
    return names


def offenders(folder, forbidden):
    found = []
    for path in sorted((REPO_ROOT / folder).rglob("*.py")):
        for line, name in imports_of(path):
            if forbidden(path, name):
                found.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {name}")
    return found


def is_model_import(name):
    return name == "tfbrain.models" or (name.startswith("tfbrain.models.")
                                        and name != "tfbrain.models.registry")


def test_layers_import_no_model():
    assert offenders("tfbrain/layers", lambda p, n: n.startswith("tfbrain.models")) == []


def test_conversion_toolkit_imports_no_family():
    assert offenders("tfbrain/conversion", lambda p, n: any(
        n.startswith(f"tfbrain.models.{family}") for family in FAMILY_DIRS)) == []


def test_families_import_no_sibling():
    def sibling(path, name):
        own = path.relative_to(REPO_ROOT / "tfbrain" / "models").parts[0]
        return any(name.startswith(f"tfbrain.models.{f}") for f in FAMILY_DIRS if f != own)

    found = []
    for family in FAMILY_DIRS:
        found += offenders(f"tfbrain/models/{family}", sibling)
    assert found == []


def test_presets_imports_no_model():
    path = REPO_ROOT / "tfbrain" / "presets.py"
    assert [n for _, n in imports_of(path) if n.startswith("tfbrain.models")] == []


def test_serving_and_tfrecords_tools_import_no_model():
    assert offenders("serving", lambda p, n: n == "tfbrain" or n.startswith("tfbrain.")) == []
    assert offenders("tfrecords_tools", lambda p, n: is_model_import(n)) == []


def test_family_free_modules_name_no_family():
    """The trainer, evaluation, attribution, export and CLI neither import a family nor
    mention a family or a task type by name in code."""
    families = FAMILY_DIRS + ["SwiFT", "NeuroSTORM", "swift_", "neurostorm_"]
    # task types: in code, not in imports of the generic metric functions
    task_types = ["classification", "regression", "contrastive", "FMRIClassifier",
                  "FMRIRegressor", "FMRIContrastive"]
    paths = [p for folder in ("tfbrain/training", "tfbrain/cli")
             for p in sorted((REPO_ROOT / folder).rglob("*.py"))]
    paths.append(REPO_ROOT / "tfbrain" / "export.py")
    found = []
    for path in paths:
        found += _mentions(path, families) + _mentions(path, task_types, imports=False)
    assert found == []


def _mentions(path, names, imports=True):
    found = []
    tree = ast.parse(path.read_text())
    # docstrings may cite where a protocol comes from ("as SwiFT reports it"); code may not
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    for node in ast.walk(tree):
        text = None
        if id(node) in docstrings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and imports:
            text = " ".join(n for _, n in [(0, getattr(node, "module", "") or "")]
                            + [(0, a.name) for a in node.names])
        if text and any(name in text for name in names):
            found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {text[:60]!r}")
    return found


def test_help_does_not_import_tensorflow():
    script = ("import sys\nfrom tfbrain.cli import build_parser\n"
              "parser = build_parser()\nparser.format_help()\n"
              "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "False"]
