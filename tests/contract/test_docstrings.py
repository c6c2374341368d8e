"""Every public function, class and method of the package has a docstring (with shapes, units, the errors raised
and the paper section where they apply: docs/methods.md, docs/architecture.md)."""

from __future__ import annotations

import ast

from tests.helpers import REPO

PACKAGE = REPO / "nnunet_prune"


def undocumented(node: ast.AST, where: str, prefix: str = "") -> list[str]:
    """``where:line name`` of every public definition under ``node`` without a docstring (classes recursively)."""
    out = []
    for n in getattr(node, "body", []):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not n.name.startswith("_"):
            if ast.get_docstring(n) is None:
                out.append(f"{where}:{n.lineno} {prefix}{n.name}")
            if isinstance(n, ast.ClassDef):
                out += undocumented(n, where, f"{prefix}{n.name}.")
    return out


def test_every_public_definition_has_a_docstring():
    missing = []
    for file in sorted(PACKAGE.rglob("*.py")):
        missing += undocumented(ast.parse(file.read_text()), str(file.relative_to(PACKAGE.parent)))
    assert not missing, "public definitions without a docstring:\n" + "\n".join(missing)
