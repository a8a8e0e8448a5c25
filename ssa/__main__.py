from ssa.cli import app

app(prog_name="ssa")
