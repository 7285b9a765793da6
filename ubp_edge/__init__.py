"""The `ubp-edge` command line: `cli` (the Typer app), `commands` (one module per command
family), `console` (output, errors, library noise) and `options` (shared options whose help
comes from the project's tables). The library lives in edge_runtime, trainer, converters
and benchmarks; nothing there imports this package."""
