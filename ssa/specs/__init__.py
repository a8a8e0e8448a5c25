"""Spec strings: the `--masks` and `--segmentor` grammars and their loaders (user code through
`ssa.plugins`, `KEY=VALUE` knobs through `ssa.keyvalue`)."""
