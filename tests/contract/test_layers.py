"""The folders are the layers (docs/architecture.md), checked on the source: each module's layer is derived from
its folder, every import goes to the same or a lower layer, no module is on an import cycle (function-level imports
count), only ``nnunet/`` and above import nnunetv2 or read the environment, ``core/`` imports nothing else of the
package, and the package root holds only ``__init__`` and the one-line aliases of dotted paths users' plans store.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "nnunet_prune"
#: the layers, bottom up: a module may import from its own layer and those before it
LAYERS = ("core", "surgery", "networks", "criteria", "methods", "nnunet", "tools", "cli")
#: the first layer allowed to import nnunetv2 or read the environment
GLUE = LAYERS.index("nnunet")
#: modules at the package root besides __init__: aliases of class paths stored in plans written by earlier versions
ALIASES = {"pspseg_network", "runtimes"}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (``_ext_trainers``' shim included)."""
    files = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return files


def layer_of(module: str) -> int:
    """The layer index of a module of the package from its folder (the root's ``__init__``: below everything;
    ``_ext_trainers``: nnU-Net's side)."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    if parts[1] == "_ext_trainers":
        return GLUE
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    raise AssertionError(f"{module} lies in no layer folder ({', '.join(LAYERS)}); move it into one")


def imports_of(name: str, path: Path, files: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(package modules imported, other top-level packages imported) by one module, module- and function-level
    imports alike; ``from package import name`` counts the package and, if it is one, the submodule."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            target = (".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
                      if node.level else node.module or "")
            found |= {target} | {f"{target}.{a.name}" for a in node.names}
    return {m for m in found if m in files and m != name}, {m.split(".")[0] for m in found}


def reads_environment(path: Path) -> list[str]:
    return [ast.unparse(node) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb")]


FILES = module_files()
EDGES = {name: imports_of(name, path, FILES) for name, path in FILES.items()}


def test_every_module_lies_in_a_layer_folder():
    root = sorted(n for n in FILES if n.count(".") == 1 and n.split(".")[1] not in (*LAYERS, "_ext_trainers"))
    assert set(root) == {f"nnunet_prune.{a}" for a in ALIASES}, "modules at the package root: " + ", ".join(root)
    for name in root:  # an alias re-exports one class and holds nothing else
        assert len(FILES[name].read_text().splitlines()) <= 5, name
    for layer in LAYERS:
        assert (PACKAGE / layer / "__init__.py").is_file(), layer


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_go_only_downward(layer):
    up = []
    for name, (inside, _) in EDGES.items():
        if name.split(".")[0:2] != ["nnunet_prune", layer]:
            continue
        up += [f"{name} -> {m}" for m in inside if layer_of(m) > LAYERS.index(layer)]
    assert not up, "imports that go up a layer:\n" + "\n".join(sorted(up))


@pytest.mark.parametrize("layer", LAYERS[:GLUE])
def test_below_the_glue_no_nnunet_and_no_environment(layer):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    for file in files:
        name = ".".join(file.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        assert "nnunetv2" not in EDGES[name][1], file
        assert not reads_environment(file), (file, reads_environment(file))


def test_core_imports_nothing_else_of_the_package():
    for name, (inside, outside) in EDGES.items():
        if name.startswith("nnunet_prune.core"):
            assert not [m for m in inside if not m.startswith("nnunet_prune.core") and m != "nnunet_prune"], name
            assert not outside & {"nnunetv2", "dynamic_network_architectures"}, name


def test_no_import_cycle():
    """No module is on an import cycle (a function-level import that closes one counts too): the package can be
    read, and imported, from the bottom up."""
    cyclic = []
    for start in EDGES:
        seen, todo = set(), list(EDGES[start][0])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += EDGES[m][0]
        if start in seen:
            cyclic.append(start)
    assert not cyclic, f"modules on an import cycle: {', '.join(sorted(cyclic))}"


def test_the_layer_check_sees_a_violation(tmp_path):
    """The checks above would fail: an upward import and a cycle are found in a fabricated pair of modules."""
    files = {"nnunet_prune.core.a": tmp_path / "a.py", "nnunet_prune.tools.b": tmp_path / "b.py"}
    files["nnunet_prune.core.a"].write_text("def f():\n    from nnunet_prune.tools import b\n")
    files["nnunet_prune.tools.b"].write_text("from nnunet_prune.core import a\n")
    edges = {n: imports_of(n, p, files)[0] for n, p in files.items()}
    assert edges == {"nnunet_prune.core.a": {"nnunet_prune.tools.b"}, "nnunet_prune.tools.b": {"nnunet_prune.core.a"}}
    assert layer_of("nnunet_prune.tools.b") > layer_of("nnunet_prune.core.a")


def test_every_variable_the_package_reads_is_documented_in_one_table():
    """`nnunet-prune doctor` prints nnunet_prune.nnunet.settings.all_variables(): the methods' variables (from their
    settings classes) and the others (one table); a variable read anywhere must be one of them."""
    import re

    from nnunet_prune.nnunet.settings import RENAMED_VARIABLES, all_variables, method_variables

    found = set()
    for file in [*PACKAGE.rglob("*.py"), PACKAGE.parent / "_nnunet_prune_hook.py"]:
        found |= set(re.findall(r"NNUNET_PRUNE_[A-Z_]+", file.read_text()))
    found -= {"NNUNET_PRUNE_PROBE"}  # a marker in doctor's output, not a variable
    assert found - set(RENAMED_VARIABLES) == set(all_variables())
    assert {"NNUNET_PRUNE_SAURON", "NNUNET_PRUNE_MAGNITUDE"} <= set(method_variables())
