"""docs/cli.md is the Typer app's reference: regenerated in memory it equals the file, and every
option of every command (read from the app's own command tree) appears in its command's section."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI_MD = ROOT / "docs" / "cli.md"
FIX = "regenerate it: python scripts/gen_cli_docs.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def commands():
    """(path, command) for the app and every command below it, e.g. ("ssa run", <run>)."""
    import typer

    from ssa.cli.commands import app

    found = []

    def walk(command, path, parent):
        ctx = typer.Context(command, info_name=path.rsplit(" ", 1)[-1], parent=parent)
        found.append((path, command))
        for name in command.list_commands(ctx) if hasattr(command, "list_commands") else []:
            walk(command.get_command(ctx, name), f"{path} {name}", ctx)

    walk(typer.main.get_command(app), "ssa", None)
    return found


def sections(text: str) -> dict[str, str]:
    """docs/cli.md cut at its headings: {"ssa": top part, "ssa run": its section, ...}."""
    parts = re.split(r"^#+ `(ssa[^`]*)`\s*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_cli_md_is_current():
    assert CLI_MD.exists(), f"{CLI_MD} is missing; {FIX}"
    fresh = load_generator().render()
    assert CLI_MD.read_text(encoding="utf-8") == fresh, f"docs/cli.md is stale; {FIX}"


def test_every_option_of_every_command_is_listed():
    text = CLI_MD.read_text(encoding="utf-8")
    by_command = sections(text)
    found = commands()
    assert len(found) > 5, "expected the app and its commands (run, eval, predict, ...)"
    missing = []
    for path, command in found:
        if getattr(command, "hidden", False):
            continue
        section = by_command.get(path)
        if section is None:
            missing.append(f"{path}: no section")
            continue
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            if param.param_type_name == "argument":  # listed by its metavar (IMAGE)
                names = [(getattr(param, "metavar", None) or param.name).upper()]
            else:
                names = [*param.opts, *param.secondary_opts]
            for name in names:
                # Typer writes each as "* `--name <type>`: help" or "* `--flag / --no-flag`".
                entry = rf"^\* `[^`]*(?<![\w-]){re.escape(name)}(?![\w-])"
                if not re.search(entry, section, re.MULTILINE):
                    missing.append(f"{path} {name}")
    assert not missing, f"not in docs/cli.md: {', '.join(missing)}; {FIX}"


@pytest.mark.parametrize("command", ["run", "eval", "predict", "engine", "export"])
def test_the_main_commands_have_sections(command):
    """Independent of the walk above: the commands the README names are documented."""
    assert f"ssa {command}" in sections(CLI_MD.read_text(encoding="utf-8"))


def test_readme_is_short_and_holds_the_ci_test_command():
    """README.md gets a newcomer running in at most 250 lines (the rest lives in docs/), and the
    test command `.ci/run` ends with is the README's, so the README's instructions are tested."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250, "README.md is over 250 lines: move detail into docs/"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci == "python -m pytest -q"
    assert f"\n{ci}\n" in readme
