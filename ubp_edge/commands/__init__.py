"""The commands of `ubp-edge`, one module per family; `ubp_edge.cli` registers them.

Each command parses its options, builds the library's config value (an `EventLogSource`,
a `TrainConfig`, a `ConvertConfig`, a `BenchmarkRequest`), checks before it reads anything
that the optional packages it needs are there (`ubp_edge.console.require`) and that its
outputs can be written and replace none of its inputs (`trainer.files.check_outputs`), calls
one library function and renders the result with Rich through `ubp_edge.console`. Heavy
imports (pyarrow, sklearn, TensorFlow) happen inside the command functions, so
``ubp-edge --help`` starts fast.

    data       data inspect, data generate, data formats
    prepare    prepare
    train      train
    convert    convert
    score      score, evaluate
    insights   explain, segment
    serve      serve, doctor
    compare    compare
    benchmark  benchmark

No module here imports `ubp_edge.cli` or another command module.
"""
