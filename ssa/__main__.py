from ssa.cli.commands import app

if __name__ == "__main__":  # not when a spawned worker re-imports the main module
    app(prog_name="ssa")
