"""The layer rules of docs/architecture.md, checked on the source: surgery, criteria and methods never import
nnunetv2 and never read the environment; surgery imports neither criteria nor methods; criteria import no methods.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nnunet_prune"
#: layer -> packages it must not import (besides nnunetv2, which none of them may)
#: the glue and the tools (layers 4 and 5)
UPPER = ("nnunet_prune.trainers", "nnunet_prune.cli", "nnunet_prune.planners", "nnunet_prune.integration",
         "nnunet_prune.export", "nnunet_prune.sweep", "nnunet_prune.report", "nnunet_prune.demo",
         "nnunet_prune.transforms", "nnunet_prune.modelfolder", "nnunet_prune.plotting", "nnunet_prune.outputs",
         "nnunet_prune.datasets", "nnunet_prune.variables", "nnunet_prune.plans_from_model", "nnunet_prune.metrics",
         "nnunet_prune.structured_sweep", "nnunet_prune.runtimes", "nnunet_prune.timing", "nnunet_prune.prechecks",
         "nnunet_prune.runtime_specs", "nnunet_prune.quiet")
FORBIDDEN = {
    "surgery": ("nnunet_prune.criteria", "nnunet_prune.methods", *UPPER),
    "criteria": ("nnunet_prune.methods", *UPPER),
    "methods": UPPER,
}
#: modules outside the three folders that belong to the lower layers (pure PyTorch)
LOWER_MODULES = ["checkpoints.py", "compact.py", "stats.py", "networks.py", "pspseg_network.py"]


def sources(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).glob("*.py"))


def imported_modules(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
    return out


def reads_environment(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
            found.append(ast.unparse(node))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downward_and_reads_no_environment(layer):
    files = sources(layer) + ([PACKAGE / m for m in LOWER_MODULES] if layer == "surgery" else [])
    assert files
    for file in files:
        tree = ast.parse(file.read_text())
        modules = imported_modules(tree)
        assert not [m for m in modules if m == "nnunetv2" or m.startswith("nnunetv2.")], file
        assert not [m for m in modules if m.startswith(FORBIDDEN[layer])], file
        assert not reads_environment(tree), (file, reads_environment(tree))


def test_core_is_pure_torch():
    """nnunet_prune/core imports no other part of the package, no nnU-Net, and reads no environment."""
    files = sorted((PACKAGE / "core").glob("*.py"))
    assert files
    for file in files:
        tree = ast.parse(file.read_text())
        outside = [m for m in imported_modules(tree) if m.split(".")[0] in ("nnunet_prune", "nnunetv2",
                                                                          "dynamic_network_architectures")
                   and not m.startswith("nnunet_prune.core")]
        assert not outside and not reads_environment(tree), (file, outside)


def _module_imports() -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports (module- and function-level imports alike;
    ``from package import name`` counts the package's ``__init__`` and, if it is one, the submodule)."""
    files = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    edges = {}
    for name, p in files.items():
        found = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".") if p.name == "__init__.py" else name.split(".")[:-1]
                target = (".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
                          if node.level else node.module or "")
                found |= {target} | {f"{target}.{a.name}" for a in node.names}
        edges[name] = {m for m in found if m in files and m != name}
    return edges


@pytest.mark.parametrize("layer", ["core", "surgery"])
def test_no_import_cycle_runs_through_the_lower_layers(layer):
    """No module of the layer is on an import cycle (a function-level import that closes one counts too): each
    layer can be read, and imported, from the bottom up."""
    edges = _module_imports()
    prefix = f"nnunet_prune.{layer}"
    modules = [m for m in edges if m == prefix or m.startswith(prefix + ".")]
    assert modules
    for start in modules:
        seen, todo = set(), list(edges[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += edges[m]
        assert start not in seen, f"{start} imports itself through {sorted(seen)}"


def test_every_variable_the_package_reads_is_documented_in_one_table():
    """`nnunet-prune doctor` prints nnunet_prune.variables.all_variables(): the methods' variables (from their settings
    classes) and the others (one table); a variable read anywhere must be one of them."""
    import re

    from nnunet_prune.trainers.base import RENAMED_VARIABLES
    from nnunet_prune.variables import all_variables, method_variables

    found = set()
    for file in [*PACKAGE.rglob("*.py"), PACKAGE.parent / "_nnunet_prune_hook.py"]:
        found |= set(re.findall(r"NNUNET_PRUNE_[A-Z_]+", file.read_text()))
    found -= {"NNUNET_PRUNE_PROBE"}  # a marker in doctor's output, not a variable
    assert found - set(RENAMED_VARIABLES) == set(all_variables())
    assert {"NNUNET_PRUNE_SAURON", "NNUNET_PRUNE_MAGNITUDE"} <= set(method_variables())
