"""Training with the defaults on CRMs unlike the demo: short history, a population never
disqualified, a drifting base rate, smooth additive effects among irrelevant attributes.

Each regime trains with no configuration beyond the horizon (and, for the additive regime, the
extra attributes it writes), scores every open lead, and the deployed recipe's outer-fold ROC
AUC and log loss are at least the logistic regression's on the same folds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from convert import load
from convert.config import Config
from convert.features.labels import build_labels
from convert.model.train import default_as_of, train
from convert.scoring.score import score
from convert.simulator.crm import generate_crm

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("regimes")]  # one worker trains each regime once

#: regime -> (leads, horizon days)
CASES = {"short": (3000, 30), "open": (3000, 60), "drift": (3000, 90), "additive": (3000, 90)}


@pytest.fixture(scope="module", params=sorted(CASES))
def regime_run(request, tmp_path_factory):
    name = request.param
    leads, horizon = CASES[name]
    folder: Path = tmp_path_factory.mktemp(name)
    summary = generate_crm(folder, n_leads=leads, seed=21, regime=name, bad_rows=False)
    config = Config().with_overrides(labels__horizon_days=horizon)
    if summary.regime.attributes:
        config = config.with_overrides(features__extra_attributes=summary.extra_attributes())
    data = load(folder, config)
    result = train(data, config)
    return name, data, config, result


def test_trains_with_the_defaults_and_scores_every_open_lead(regime_run):
    name, data, config, result = regime_run
    t = default_as_of(data)
    meta = result.model.metadata
    # the deployed booster learned every labelled snapshot up to as_of - horizon
    assert meta.deployed_fit is not None
    assert pd.Timestamp(meta.deployed_fit.to) <= t - pd.Timedelta(days=config.labels.horizon_days)
    assert meta.deployed_fit.rows == len(result.training_set.frame)
    scored = score(data, result.model, t, config, model_version=f"{name}/1")
    population = build_labels(data.con, [t], config.labels.horizon_days)
    assert len(scored) == len(population) > 0
    assert set(scored["lead_id"]) == set(population["lead_id"].astype(str))
    assert (scored["base_score"] + scored["fit_points"] + scored["engagement_points"] == scored["score"]).all()


def test_outer_folds_at_least_as_good_as_the_logistic_regression(regime_run):
    name, _, _, result = regime_run
    m = result.evaluation.metrics
    assert m.loc["roc_auc", "model"] >= m.loc["roc_auc", "logistic_regression"], name
    assert m.loc["log_loss", "model"] <= m.loc["log_loss", "logistic_regression"], name
    assert np.isfinite(m.loc["ece", "model"])
