"""The layers import downwards only: spark_core (the library) knows neither the orchestration
(prefect, flows, tasks), the deployment nor the command line; flows and tasks know nothing of
how they are deployed or called."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = {
    "spark_core": {"prefect", "flows", "tasks", "deployments", "spark_cli"},
    "tasks": {"flows", "deployments", "spark_cli"},
    "flows": {"deployments", "spark_cli"},
    "deployments": {"spark_cli"},
}


def imported_roots(path: Path) -> set[str]:
    """Top-level package of every import in a module, wherever it is (inside functions too)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(RULES))
def test_no_import_points_upwards(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    bad = {f.relative_to(ROOT).as_posix(): sorted(imported_roots(f) & RULES[package]) for f in files}
    assert {f: b for f, b in bad.items() if b} == {}


def test_the_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from flows.local import api_or_ephemeral\n    import prefect.settings\n")
    assert imported_roots(f) == {"flows", "prefect"}


def test_help_groups_every_command_with_a_summary():
    """`spark --help` lists the commands under four headings, each command with a summary line."""
    import typer.main

    from spark_cli.main import app

    group = typer.main.get_group(app)
    panels = {name: getattr(cmd, "rich_help_panel", None) for name, cmd in group.commands.items()}
    assert set(panels.values()) == {"Running", "Evaluation", "Data and inspection", "Models"}, panels
    for name, cmd in group.commands.items():
        assert (cmd.help or "").strip(), f"`spark {name}` has no summary"
