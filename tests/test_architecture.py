"""The layers of ARCHITECTURE.md: what each folder of vmxdbg must never import.

Imports inside functions count too; an import under `if TYPE_CHECKING:` (a type
name only, never executed) does not.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

PACKAGE = Path(__file__).resolve().parent.parent / "vmxdbg"
FACES = {"cli", "bang", "pytest_plugin", "__main__"}
LAYERS = {"common", "decode", "inputs", "state", "rules", "report", "backends", "record", "trace",
          "hypervisors", "commands", "console"}
ALL = LAYERS | FACES
#: folder -> the folders (and entry modules) it must never import
NEVER: Dict[str, Set[str]] = {
    "common": ALL - {"common"},
    "decode": ALL - {"common", "decode"},
    "inputs": ALL - {"common", "decode", "state", "inputs"},
    "state": {"inputs", "report", "record", "trace", "hypervisors", "commands", "console"} | FACES,
    "rules": {"backends", "inputs", "record", "trace", "hypervisors", "commands", "console"} | FACES,
    "report": {"backends", "inputs", "rules", "record", "trace", "hypervisors", "commands", "console"} | FACES,
    "backends": {"rules", "report", "trace", "hypervisors", "commands", "console"} | FACES,
    "record": {"inputs", "rules", "report", "trace", "hypervisors", "commands", "console"} | FACES,
    "trace": {"inputs", "hypervisors", "commands", "console"} | FACES,
    "hypervisors": {"commands", "console"} | FACES,
    "console": {"commands"} | FACES,
    "commands": FACES,
}
#: the one module of state/ that may use a backend, and only the contract
STATE_BACKEND_IMPORTS = {"vmxdbg.backends.base"}


def _module(path: Path) -> Tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _type_checking_nodes(tree: ast.AST) -> Set[int]:
    skip: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    return skip


def imports() -> Iterator[Tuple[str, str, int]]:
    """(importing module, imported vmxdbg module or name, line) for every vmxdbg import."""
    for path in sorted(PACKAGE.rglob("*.py")):
        mod, pkg = _module(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if pkg else mod.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target == "vmxdbg":
                    for a in node.names:
                        yield mod, f"vmxdbg.{a.name}", node.lineno
                elif target.startswith("vmxdbg."):
                    yield mod, target, node.lineno
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("vmxdbg.") or a.name == "pykd":
                        yield mod, a.name, node.lineno


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_no_layer_imports_what_it_must_never_import():
    wrong = []
    for mod, target, line in imports():
        src, dst = _layer(mod), _layer(target)
        if dst in NEVER.get(src, set()):
            wrong.append(f"{mod}:{line} imports {target} ({src}/ must never import {dst})")
        if src == "state" and dst == "backends" and target not in STATE_BACKEND_IMPORTS:
            wrong.append(f"{mod}:{line} imports {target} (state/ uses only the backend contract)")
    assert wrong == []


def test_only_the_windbg_backend_imports_pykd():
    assert [(m, line) for m, t, line in imports() if t == "pykd" and m != "vmxdbg.backends.windbg"] == []


def test_every_folder_is_named_in_architecture_md():
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text(encoding="utf-8")
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= LAYERS | {"examples", "windbg", "schemas"}
    for f in sorted(folders):
        assert f"`{f}/`" in text, f"ARCHITECTURE.md does not describe vmxdbg/{f}/"
