"""serving/ depends on the SavedModel signature only: it never imports tfbrain (models or export)."""

import ast

from tests.test_case import REPO_ROOT, TestCase


class ArchitectureTest(TestCase):
    def test_serving_never_imports_tfbrain(self):
        offenders = []
        for path in sorted((REPO_ROOT / "serving").rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path.relative_to(REPO_ROOT)}:{node.lineno} {n}"
                              for n in names if n == "tfbrain" or n.startswith("tfbrain.")]
        self.assertEqual(offenders, [])
