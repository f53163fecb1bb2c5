"""The import graph only points down: each layer imports from itself and the layers below."""

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "cmkd"

#: Lowest first. A module belongs to the first layer whose prefix matches its dotted name.
LAYERS = [
    ("cmkd.version", "cmkd.errors", "cmkd.files", "cmkd.config", "cmkd.registry", "cmkd.runtime", "cmkd.distributed"),
    ("cmkd.data",),
    ("cmkd.models",),
    ("cmkd.losses",),
    ("cmkd.checkpoint", "cmkd.run_folder"),
    ("cmkd.eval",),
    ("cmkd.train",),
    ("cmkd.predict", "cmkd.deploy", "cmkd.demo", "cmkd.cli", "cmkd.__main__", "cmkd"),
]


def layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer; add it to LAYERS")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "cmkd":
            found |= {f"cmkd.{a.name}" for a in node.names}  # from cmkd import distributed
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cmkd"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cmkd")}
    return found


def test_every_layer_names_existing_modules():
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    for prefixes in LAYERS:
        for prefix in prefixes:
            assert any(m == prefix or m.startswith(prefix + ".") for m in modules), f"{prefix} does not exist"


def registry_calls(path: Path) -> set[str]:
    """Registries a module resolves (``HEADS.get(...)``, ``BACKBONES.build(...)``): string imports of their targets."""
    from cmkd import registry

    names = {n for n, v in vars(registry).items() if isinstance(v, registry.Registry)}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "build") \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in names:
            found.add(node.func.value.id)
    return found


def test_registry_targets_exist_and_are_resolved_from_their_layer_or_above():
    """A registry entry is an import by string: its target must exist, and every module that resolves the
    registry must sit at or above the target's layer (so the string does not hide an upward import)."""
    import importlib

    from cmkd import registry

    upward = []
    for path in sorted(SRC.rglob("*.py")):
        me = module_name(path)
        for name in registry_calls(path):
            for entry in getattr(registry, name).entries.values():
                module, _, attr = entry.target.partition(":")
                assert hasattr(importlib.import_module(module), attr), f"{entry.target} does not exist"
                if layer(module) > layer(me):
                    upward.append(f"{me} (layer {layer(me)}) resolves {name} -> {module} (layer {layer(module)})")
    assert not upward, "\n".join(upward)
    assert registry_calls(SRC / "models" / "fewshot.py") >= {"HEADS", "BACKBONES"}, "the test sees registry calls"


def test_every_import_points_down_or_sideways():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        me = module_name(path)
        for target in imports(path):
            if layer(target) > layer(me):
                upward.append(f"{me} (layer {layer(me)}) imports {target} (layer {layer(target)})")
    assert not upward, "\n".join(upward)


def test_no_module_cites_a_file_outside_the_repository():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "DESIGN.md" not in text and "../shared" not in text, f"{path} cites a file users do not have"
    for doc in {m for p in SRC.rglob("*.py") for m in __import__("re").findall(r"docs/[\w./-]+\.md", p.read_text())}:
        assert (SRC.parents[1] / doc).exists(), f"code cites {doc}, which does not exist"


def test_the_trainer_stays_small():
    """The loop wires parts with one job each (schedule, distiller, LSL, run state); it should not grow back."""
    assert len((SRC / "train" / "loop.py").read_text().splitlines()) <= 200
