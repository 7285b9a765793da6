"""From trained weights to artifacts, at conversion time (TensorFlow allowed here).

Modules: `precisions` (the precision table), `graphs` (export graphs as concrete functions),
`tflite` (convert, validate in edge_runtime, recalibrate, write: `convert_run`,
`auto_convert`), `metadata_writer` (Model.metadata entries and the integrity seal), `compare`
and `compare_report` (float32 against quantized artifacts).
"""
