"""The training side of ubp-edge: from an event log to a run directory that `convert` reads.

TensorFlow, scikit-learn and pyarrow are used here and never in `edge_runtime`; the one
FeatureEncoder (`edge_runtime.features`) is shared, so training and the device encode alike.

- Reading: `formats` (the table of log formats), `logsource` (a log and how to read it),
  `readers` (a log -> `EventLog`), `quarantine` (the bad rows, counted and kept).
- Modelling: `sessions` (sessions, labels, the time split), `dataset` (sessions -> encoded
  inputs), `model` (the Keras LSTM), `train` (a training run, stage by stage), `metrics`
  (the metric table and the figures).
- Files: `rundir` (the run directory: staged writing, `RunDirectory` reading), `files`
  (atomic writes), `scoring` (scores of a log through an artifact), `summary` (``data
  inspect``), `synthetic` (the seeded demo log).
"""
