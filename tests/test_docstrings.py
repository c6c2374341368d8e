"""Every public function, class and method of the package has a docstring (the developers' guide asks for shapes,
units, errors raised and the paper section there)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nnunet_prune"


def test_every_public_definition_has_a_docstring():
    missing = []
    for file in sorted(PACKAGE.rglob("*.py")):
        def visit(node, prefix=""):
            for n in getattr(node, "body", []):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not n.name.startswith("_"):
                    if ast.get_docstring(n) is None:
                        missing.append(f"{file.relative_to(PACKAGE.parent)}:{n.lineno} {prefix}{n.name}")
                    if isinstance(n, ast.ClassDef):
                        visit(n, f"{prefix}{n.name}.")

        visit(ast.parse(file.read_text()))
    assert not missing, "public definitions without a docstring:\n" + "\n".join(missing)
