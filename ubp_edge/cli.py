"""`ubp-edge`: the one command. This module only builds the Typer app and registers the
commands of `ubp_edge.commands`; ``main`` is the console script's entry point.

    python -m ubp_edge.cli --help        (or the installed `ubp-edge --help`)

A command parses its options, builds the library's config value, calls one library function
and renders the result (`ubp_edge.commands`). Errors a person can act on (UbpEdgeError)
become one red line on stderr and exit code 1 (`ubp_edge.console.user_errors`); anything else
keeps its traceback, because it is a bug. The libraries' own output (TensorFlow, the TFLite
interpreter's native lines, Python warnings) is kept off the terminal unless ``--verbose``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ubp_edge.commands import (
    benchmark,
    compare,
    convert,
    data,
    export,
    insights,
    prepare,
    score,
    serve,
    train,
)
from ubp_edge.console import library_output

app = typer.Typer(help="Purchase-intent scoring of browsing sessions, trained with an LSTM and "
                       "run on the edge with TFLite.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Inspect event logs, list the formats read, generate the embedded demo log.",
                       no_args_is_help=True)


@app.callback()
def options(
    verbose: Annotated[bool, typer.Option(
        "--verbose", help="Let the libraries' own output through: TensorFlow and TFLite logs, "
                          "Python warnings.")] = False,
) -> None:
    """Options for every command: set how much the libraries may print."""
    library_output(verbose)


app.command("prepare", epilog=prepare.EPILOG)(prepare.prepare)
app.command("train")(train.train)
app.command("convert", epilog=convert.EPILOG)(convert.convert)
app.command("score")(score.score)
app.command("evaluate")(score.evaluate)
app.command("explain")(insights.explain)
app.command("segment")(insights.segment)
app.command("serve")(serve.serve)
app.command("doctor")(serve.doctor)
app.command("compare")(compare.compare)
app.command("benchmark")(benchmark.benchmark)
app.command("export-spec")(export.export_spec)
app.add_typer(data_app, name="data")
data_app.command("inspect")(data.inspect)
data_app.command("generate")(data.generate)
data_app.command("formats")(data.formats)


def main() -> None:
    """The `ubp-edge` console script."""
    app()


if __name__ == "__main__":
    main()
