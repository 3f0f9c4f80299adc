"""Threads (issue 14, finding 7): scoring uses every core by default and gives the same scores
whatever the thread count; training keeps a fixed thread count (the same model anywhere)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

import convert.model.explain as explain
from convert.config import Config
from convert.model.bundle import predict_threads
from convert.model.treeshap import lightgbm_matrix
from convert.scoring.score import feature_rows, score_frame

AS_OF = pd.Timestamp("2025-07-01")
SCORED_AT = pd.Timestamp("2025-07-01 06:00")


def test_scores_are_identical_whatever_the_thread_count(trained, fast_config, monkeypatch) -> None:
    result, data = trained
    model = result.model
    rows = feature_rows(data, model, AS_OF, fast_config)
    assert len(rows) > 100

    def scores(threads: int) -> pd.DataFrame:
        config = fast_config.scoring.model_copy(update={"num_threads": threads})
        return score_frame(model, rows, config, "lead-test/1", SCORED_AT)

    one = scores(1)
    for threads in (0, 2, 3):  # 0: every core; more threads than cores too
        pd.testing.assert_frame_equal(scores(threads), one, check_exact=True)
    # LightGBM's own pred_contrib (the engine used without numba): the same, any thread count
    monkeypatch.setattr(explain, "_engine", lambda _model: None)
    lightgbm_one = scores(1)
    for threads in (0, 2):
        pd.testing.assert_frame_equal(scores(threads), lightgbm_one, check_exact=True)
    matrix = model.matrix(rows)
    raw = [model.booster_.predict(matrix, raw_score=True, num_threads=n) for n in (1, 2, 0)]
    assert all(np.array_equal(r, raw[0]) for r in raw)
    # a blend's raw score adds the linear half to the trees' (same whatever the thread count)
    assert np.array_equal(model.predict_raw(rows), model.blend_raw(raw[0], lightgbm_matrix(matrix)))


def test_scoring_defaults_to_every_core_and_training_to_a_fixed_count(trained) -> None:
    result, _ = trained
    assert Config().scoring.num_threads == 0
    cores = len(os.sched_getaffinity(0))
    assert predict_threads() == cores and predict_threads(3) == 3
    # training: the fixed default, whatever this machine has; overridable in train.lightgbm,
    # as the tests' FAST configuration does (one thread per pytest-xdist worker)
    assert Config().train.lightgbm.get("num_threads") is None
    assert result.model.booster_.params["num_threads"] == 1  # the override reached LightGBM
    saved = result.model.params.pop("num_threads")
    try:
        assert result.model._lgb_params(result.model.spec_)["num_threads"] == 2  # the default
        result.model.params["num_threads"] = 4
        assert result.model._lgb_params(result.model.spec_)["num_threads"] == 4
    finally:
        result.model.params["num_threads"] = saved
