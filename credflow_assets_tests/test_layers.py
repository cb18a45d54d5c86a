"""Imports point one way: cli/ → flows → common/ → resources/ → config.py (DESIGN.md).

A flow never imports the `credflow` command, the local stack, the resource factory, the
registry of flows or another flow; the shared pieces import no flow; a resource knows nothing of
flows. Every import counts, the ones inside functions too.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "credflow_assets"
FLOWS = ("therapists", "drive_feeds", "provider_feeds", "staged_tables")
# What sits above the flows: it may import them, they may not import it.
ABOVE_FLOWS = ("credflow_assets.cli", "credflow_assets.local", "credflow_assets.definitions",
               "credflow_assets.flows", "credflow_assets.run_coordinator",
               "credflow_assets.resources.from_config")


def _imports(path: Path) -> set[str]:
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[:-node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("credflow_assets")}


def _under(name: str, prefixes) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _modules(subpackage: str) -> list[Path]:
    return sorted((PACKAGE / subpackage).rglob("*.py"))


def _flow_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOWS else None


@pytest.mark.parametrize("flow", FLOWS)
def test_a_flow_imports_no_tooling_no_local_stack_and_no_other_flow(flow):
    wrong = {}
    for path in _modules(flow):
        bad = sorted(name for name in _imports(path)
                     if _under(name, ABOVE_FLOWS) or _flow_of(name) not in (None, flow))
        if bad:
            wrong[str(path.relative_to(PACKAGE))] = bad
    assert not wrong, f"imports that point the wrong way: {wrong}"


def test_the_shared_pieces_import_no_flow_and_no_tooling():
    wrong = {}
    for path in _modules("common"):
        bad = sorted(name for name in _imports(path)
                     if _under(name, ABOVE_FLOWS) or _flow_of(name) is not None)
        if bad:
            wrong[str(path.relative_to(PACKAGE))] = bad
    assert not wrong, f"imports that point the wrong way: {wrong}"


def test_resources_know_nothing_of_flows_or_the_shared_pieces():
    wrong = {}
    for path in _modules("resources"):
        if path.name == "from_config.py":  # the factory: it builds every resource from config
            continue
        bad = sorted(name for name in _imports(path)
                     if not _under(name, ("credflow_assets.resources", "credflow_assets.config")))
        if bad:
            wrong[str(path.relative_to(PACKAGE))] = bad
    assert not wrong, f"imports that point the wrong way: {wrong}"


def test_the_rule_sees_an_import_inside_a_function(tmp_path):
    """The check reads imports made inside functions, where lazy imports hide."""
    module = PACKAGE / "drive_feeds" / "_layer_probe_for_test.py"
    module.write_text("def f():\n    from credflow_assets.cli.sync import sync\n")
    try:
        assert "credflow_assets.cli.sync" in _imports(module)
    finally:
        module.unlink()
