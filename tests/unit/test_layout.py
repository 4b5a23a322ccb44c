"""The product's code apart from its harness: nothing in the runtime imports the simulation, the benchmarks or
the CLI (read from the source with `ast`, so a lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.cli import REPO

AGENT = REPO / "agent"
HARNESS = ("l2mu.agent.sim", "l2mu.agent.bench", "l2mu.agent.cli")


def imported_modules(path: Path, package: list[str] | None = None) -> set[str]:
    """Every module `path` imports, at any depth; `package`: its package, for relative imports."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:  # relative: resolve against the module's package
                here = package or ["l2mu", "agent", *path.relative_to(AGENT).parent.parts]
                base = here[: len(here) - node.level + 1]
                out.add(".".join([*base, node.module]))
            else:
                out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def runtime_modules() -> list[Path]:
    # agent/native (the native runner's binding) belongs to the runtime too.
    return sorted([*AGENT.glob("*.py"), *(AGENT / "native").glob("*.py")])


def test_the_runtime_imports_no_simulation_benchmark_or_cli() -> None:
    offenders = {
        p.name: sorted(m for m in imported_modules(p) if m.startswith(HARNESS))
        for p in runtime_modules()
    }
    assert {name: mods for name, mods in offenders.items() if mods and name != "__main__.py"} == {}


def test_the_check_sees_a_harness_import_wherever_it_is(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from l2mu.agent.sim.watches import make_watch\n    import l2mu.agent.bench.load\n"
                     "    from .cli import app\n")
    found = imported_modules(probe, ["l2mu", "agent"])
    assert {"l2mu.agent.sim.watches", "l2mu.agent.bench.load", "l2mu.agent.cli"} <= found


def test_the_runtime_is_the_layout_readme_shows() -> None:
    runtime = {p.stem for p in AGENT.glob("*.py")} - {"__init__", "__main__"}
    assert {"daemon", "settings", "events", "errors", "compose", "sources", "ble", "intake", "pipeline", "resample",
            "streaming", "smoothing", "runtime", "mqtt", "outbox", "hass", "sdnotify"} <= runtime
    packages = {p.name for p in AGENT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == {"cli", "sim", "bench", "native"}
    readme = (REPO / "README.md").read_text()
    for folder in ("agent/cli/", "agent/sim/", "agent/bench/", "agent/native/"):
        assert folder in readme
