"""From a score to an action, on a whole log: what `explain` and `segment` compute.

The device-side pieces live in edge_runtime (`explain`: a session's live trajectory and
occlusion by feature group; `tiers`: intent tiers and live triggers); this package reads a
log through `trainer.scoring`, names what the runtime computed in the log's own terms
(event types, item and category ids, times) and writes it for an analyst.

- `explain`: trajectories and top events of chosen sessions, feature-group importance over
  the log (`explain_log`, `LogExplanation.to_dict` is the JSON).
- `segments`: intent tiers of a log's sessions, their sizes, purchase rates and lift, and
  the per-session and per-user assignments (`segment_log`, `write_assignments`).
- `report`: `explain --report DIR`, a Markdown page and its PNG plots.
"""
