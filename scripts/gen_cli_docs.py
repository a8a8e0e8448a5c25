"""Write docs/cli.md, the command-line reference, from the Typer app (`ssa.cli.commands.app`).

    python scripts/gen_cli_docs.py            # regenerate docs/cli.md
    python scripts/gen_cli_docs.py --check    # exit 1 when docs/cli.md is stale

The Markdown is Typer's own (`typer ssa.cli.commands utils docs --name ssa`): every command,
argument and option with its help, `[default: ...]` and `[required]`. It runs in a subprocess
with this checkout first on `PYTHONPATH`, so the `ssa` documented is the one beside this script,
whatever is installed. `tests/test_cli_docs.py` fails when the file is stale.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_MD = ROOT / "docs" / "cli.md"
HEADER = (
    "<!-- Generated from ssa.cli.commands by scripts/gen_cli_docs.py (typer utils docs); "
    "do not edit by hand: run `python scripts/gen_cli_docs.py`. -->\n\n"
)


def render() -> str:
    """The reference as Markdown (str, ending in one newline), rendered by Typer's generator."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    # Typer's Markdown does not depend on the terminal, but keep rich out of colour decisions.
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="100")
    done = subprocess.run(
        [sys.executable, "-m", "typer", "ssa.cli.commands", "utils", "docs", "--name", "ssa"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"typer utils docs failed (exit {done.returncode}):\n{done.stderr}")
    return HEADER + done.stdout.strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    parser.add_argument("--out", type=Path, default=CLI_MD, help="default: docs/cli.md")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
