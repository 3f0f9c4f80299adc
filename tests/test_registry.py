"""MLflow: logging, the pyfunc round trip by alias, and promotion in both directions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convert.exceptions import ModelNotFoundError
from convert.registry import store as registry


def _log(result, name: str, metrics: dict[str, float]):
    hold = result.training_set.frame.loc[result.split.masks["holdout"]]
    return registry.log_training(
        result.model, name, params={"seed": 1}, metrics=metrics,
        tables={"metrics": result.evaluation.metrics.reset_index()}, figures={},
        input_example=hold,
    )


@pytest.mark.slow  # logs a pyfunc model to MLflow and loads it back
def test_pyfunc_round_trip_by_alias(trained, mlflow_store):
    result, _ = trained
    reg = _log(result, "lead-test", {"holdout_log_loss": 0.1})
    assert reg.version == "1"
    hold = result.training_set.frame.loc[result.split.masks["holdout"]].head(300)
    pyfunc = registry.load_pyfunc("models:/lead-test@champion")
    # plain strings and numbers in: no pandas categories
    plain = hold[result.model.spec_.names].copy()
    out = pyfunc.predict(plain)
    assert list(out.columns) == ["probability", "score", "grade"]
    expected = result.model.predict_proba(hold)[:, 1]
    assert np.array_equal(out["probability"].to_numpy(), expected)
    model, label = registry.load_model("models:/lead-test@challenger")
    assert label == "lead-test/1"
    assert np.array_equal(model.predict_proba(hold)[:, 1], expected)


@pytest.mark.slow
def test_first_version_is_champion_and_challenger_then_promotion_rules(trained, mlflow_store):
    result, _ = trained
    _log(result, "lead-promo", {"holdout_log_loss": 0.20})
    assert registry.promote("lead-promo").reason == "version 1 is already the champion"
    # a worse challenger stays a challenger
    _log(result, "lead-promo", {"comparison_challenger_log_loss": 0.30, "comparison_champion_log_loss": 0.25})
    decision = registry.promote("lead-promo", "log_loss")
    assert not decision.promoted and decision.champion == "1" and "kept the champion" in decision.reason
    # a better one takes over
    _log(result, "lead-promo", {"comparison_challenger_log_loss": 0.18, "comparison_champion_log_loss": 0.25})
    decision = registry.promote("lead-promo", "log_loss")
    assert decision.promoted and decision.champion == "3"
    assert registry.resolve("models:/lead-promo@champion").version == "3"
    # higher-is-better metrics compare the other way
    _log(result, "lead-promo", {"comparison_challenger_roc_auc": 0.70, "comparison_champion_roc_auc": 0.80})
    assert not registry.promote("lead-promo", "roc_auc").promoted


def test_unknown_model_is_a_clear_error(mlflow_store):
    with pytest.raises(ModelNotFoundError, match="no model"):
        registry.load_model("models:/nothing-here@champion")


@pytest.mark.slow
def test_promotion_after_a_refit_compares_where_neither_model_learned(sim_export, fast_config, mlflow_store):
    """Deployed models learn every labelled snapshot: promotion compares on labelled as-of times
    newer than both training cut-offs when there are some, else both recipes on the
    challenger's outer folds, and says which."""
    from convert import steps

    cfg = fast_config.with_overrides(train__min_positives=10)
    lines: list[str] = []
    steps.train_step(sim_export, cfg, as_of=pd.Timestamp("2024-11-01"), model_name="lead-refit", echo=lines.append)
    # an earlier cut-off than the data's end: labelled as-of times newer than both exist
    summary = steps.train_step(sim_export, cfg, as_of=pd.Timestamp("2025-01-01"), model_name="lead-refit", echo=lines.append)
    run = registry._client().get_run(summary.registered.run_id)
    assert run.data.params["comparison"].startswith("newer as-of times")
    decision = registry.promote("lead-refit", "log_loss")
    assert "newer as-of times" in decision.reason
    ours, theirs = run.data.metrics["comparison_challenger_log_loss"], run.data.metrics["comparison_champion_log_loss"]
    assert decision.promoted == (theirs - ours > 0)
    # trained to the data's end: nothing newer is labelled, so the champion's recipe is refitted
    # on the challenger's outer folds
    summary = steps.train_step(sim_export, cfg, model_name="lead-refit", echo=lines.append)
    run = registry._client().get_run(summary.registered.run_id)
    assert run.data.params["comparison"].startswith("the challenger's outer folds")
    decision = registry.promote("lead-refit", "log_loss")
    assert "the challenger's outer folds, the champion's recipe refitted there" in decision.reason
    ours, theirs = run.data.metrics["comparison_challenger_log_loss"], run.data.metrics["comparison_champion_log_loss"]
    assert decision.promoted == (theirs - ours > 0)
