"""`train --tune N`: a small random search over the LSTM's settings, judged on validation.

The budget is N trained models. Trial 0 is the configuration as given (the article's
defaults unless other options were typed), so tuning never picks settings that did worse on
the validation split than the defaults; trials 1..N-1 are distinct draws from SEARCH_SPACE,
seeded by ``--seed``. Every trial trains with early stopping on validation PR-AUC, as `train`
does; the trial with the highest validation PR-AUC (ROC-AUC breaks ties) is the model kept.
The test split is never looked at. tuning.json in the run directory lists every trial and the
chosen settings, which config.json then holds.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np

# What the search may change, and the values it tries (TrainConfig field -> choices).
SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "units": (32, 64, 128, 192),
    "dropout": (0.0, 0.1, 0.2, 0.3),
    "learning_rate": (3e-4, 1e-3, 3e-3),
    "class_weight": ("balanced", "none"),
    "prefixes": ("random", "whole"),
}
MAX_TRIALS = 100


def settings_of(config: Any) -> dict[str, Any]:
    """The searched settings of a TrainConfig, as plain JSON values."""
    return {k: getattr(getattr(config, k), "value", getattr(config, k)) for k in SEARCH_SPACE}


def trial_settings(config: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """The settings of ``n`` trials: the config's own first, then distinct random draws."""
    first = settings_of(config)
    grid = [dict(zip(SEARCH_SPACE, values, strict=True))
            for values in itertools.product(*SEARCH_SPACE.values())]
    others = [g for g in grid if g != first]
    order = np.random.default_rng(seed).permutation(len(others))[:max(0, n - 1)]
    return [first] + [others[i] for i in order]


def better(a: Mapping[str, float], b: Mapping[str, float] | None) -> bool:
    """Whether validation scores ``a`` beat ``b`` (PR-AUC, then ROC-AUC)."""
    return b is None or (a["pr_auc"], a["roc_auc"]) > (b["pr_auc"], b["roc_auc"])
