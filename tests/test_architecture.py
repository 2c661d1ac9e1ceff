"""The package's import direction (docs/architecture.md): every module imports only from its
own package or from packages below it, so the layers stay readable and free of cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import geounet

# Lower number = lower layer. A module may import from its own package and from lower layers.
LAYERS = {
    "errors": 0,
    "config": 1,
    "atomic": 1,
    "heap": 1,
    "settings": 2,
    "compute": 2,
    "weights": 2,
    "models": 3,
    "scene": 3,
    "synth": 3,
    "checkpoint": 4,
    "vectorize": 5,
    "infer": 6,
    "export": 6,
    "evaluate": 7,
    "train": 8,
    "batch": 9,
    "cli": 10,
}
ROOT = Path(geounet.__file__).parent


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_import_goes_down_the_layers() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        here = _package(".".join(rel.parts))
        if here in ("", "__init__"):
            continue  # geounet/__init__.py re-exports the public API lazily
        here = here.removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for module in names:
                if not module.startswith("geounet."):
                    continue
                there = _package(module)
                assert here in LAYERS and there in LAYERS, f"{path}: add {here!r} or {there!r} to LAYERS"
                if there != here and LAYERS[there] > LAYERS[here]:
                    wrong.append(f"{rel}: {here} imports {module} (a higher layer)")
    assert not wrong, "\n".join(wrong)
