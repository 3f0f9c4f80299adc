"""MLflow: logging, the pyfunc round trip by alias, and promotion in both directions."""

from __future__ import annotations

import numpy as np
import pytest

from convert import registry
from convert.exceptions import ModelNotFoundError


def _log(result, name: str, metrics: dict[str, float]):
    hold = result.training_set.frame.loc[result.split.masks["holdout"]]
    return registry.log_training(
        result.model, name, params={"seed": 1}, metrics=metrics,
        tables={"metrics": result.evaluation.metrics.reset_index()}, figures={},
        input_example=hold,
    )


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


def test_first_version_is_champion_and_challenger_then_promotion_rules(trained, mlflow_store):
    result, _ = trained
    _log(result, "lead-promo", {"holdout_log_loss": 0.20})
    assert registry.promote("lead-promo").reason == "version 1 is already the champion"
    # a worse challenger stays a challenger
    _log(result, "lead-promo", {"holdout_log_loss": 0.30, "champion_holdout_log_loss": 0.25})
    decision = registry.promote("lead-promo", "log_loss")
    assert not decision.promoted and decision.champion == "1" and "kept the champion" in decision.reason
    # a better one takes over
    _log(result, "lead-promo", {"holdout_log_loss": 0.18, "champion_holdout_log_loss": 0.25})
    decision = registry.promote("lead-promo", "log_loss")
    assert decision.promoted and decision.champion == "3"
    assert registry.resolve("models:/lead-promo@champion").version == "3"
    # higher-is-better metrics compare the other way
    _log(result, "lead-promo", {"holdout_roc_auc": 0.70, "champion_holdout_roc_auc": 0.80})
    assert not registry.promote("lead-promo", "roc_auc").promoted


def test_unknown_model_is_a_clear_error(mlflow_store):
    with pytest.raises(ModelNotFoundError, match="no model"):
        registry.load_model("models:/nothing-here@champion")
