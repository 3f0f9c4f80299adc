"""Scoring and explanations: exact SHAP, points that add up, reasons, actions, write-back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from convert import load, score
from convert.analysis.plots import plot_waterfall
from convert.config import Config
from convert.exceptions import FeatureMismatchError
from convert.model.explain import contributions, explain_lead, round_preserving_sum
from convert.model.train import train
from convert.schema import ScoreOutput
from convert.scoring.score import feature_rows

AS_OF = pd.Timestamp("2025-07-01")


@pytest.fixture(scope="module")
def scored(trained, fast_config):
    result, data = trained
    return score(data, result.model, AS_OF, fast_config, model_version="lead-test/1",
                 scored_at=pd.Timestamp("2025-07-01 06:00"))


def test_output_has_the_contract_columns_and_one_row_per_open_lead(scored, trained):
    _, data = trained
    assert list(scored.columns) == ScoreOutput.names()
    open_leads = data.con.execute(
        "SELECT count(*) FROM leads WHERE created_at < ? AND (converted_at IS NULL OR converted_at >= ?) "
        "AND (disqualified_at IS NULL OR disqualified_at >= ?)", [pd.Timestamp(AS_OF)] * 3
    ).fetchall()[0][0]
    assert len(scored) == open_leads and scored["lead_id"].is_unique
    assert scored["score"].between(0, 100).all()
    assert set(scored["grade"]) <= {"A", "B", "C", "D"}
    assert set(scored["action"]) <= {"route_to_sales", "nurture", "review_disqualify"}


def test_points_add_up_for_every_lead(scored):
    total = scored["base_score"] + scored["fit_points"] + scored["engagement_points"]
    assert (total == scored["score"]).all()
    assert (scored["score"] == np.floor(100 * scored["probability"] + 0.5)).all()


def test_reasons_are_signed_sentences_with_values(scored):
    reasons = scored["reason_1"].dropna()
    risks = scored["risk_1"].dropna()
    assert len(reasons) > len(scored) * 0.2 and len(risks) > 0
    assert reasons.str.match(r"^\+\d+ \S").all() and risks.str.match(r"^-\d+ \S").all()
    assert not reasons.str.contains("nan").any()
    # reasons come strongest first
    top = scored.dropna(subset=["reason_1", "reason_2"])
    first = top["reason_1"].str.extract(r"^\+(\d+)")[0].astype(int)
    second = top["reason_2"].str.extract(r"^\+(\d+)")[0].astype(int)
    assert (first >= second).all()


def test_actions_follow_the_thresholds(scored, fast_config):
    s = fast_config.scoring
    hot = scored["score"] >= s.route_to_sales_min_score
    assert (scored.loc[hot, "action"] == "route_to_sales").all()
    assert (scored.loc[scored["action"] == "review_disqualify", "score"] <= s.review_disqualify_max_score).all()


def test_contributions_equal_lightgbm_pred_contrib(trained, fast_config):
    result, data = trained
    rows = feature_rows(data, result.model, AS_OF, fast_config)
    matrix = result.model.matrix(rows)
    ours = contributions(result.model, matrix)
    reference = result.model.booster_.predict(matrix, pred_contrib=True)
    model = result.model
    if model.linear_ is not None:  # a log-odds blend: the weighted sum of both models' contributions
        from convert.model.treeshap import lightgbm_matrix

        w = model.blend_weight_
        reference = (1 - w) * reference + w * model.linear_.contributions(lightgbm_matrix(matrix))
    assert np.max(np.abs(ours - reference)) <= 1e-6
    assert np.allclose(ours.sum(axis=1), model.predict_raw(rows), atol=1e-9)


def test_scores_are_reproducible_to_the_last_digit(trained, fast_config, scored):
    result, data = trained
    again = score(data, result.model, AS_OF, fast_config, model_version="lead-test/1",
                  scored_at=pd.Timestamp("2025-07-01 06:00"))
    pd.testing.assert_frame_equal(scored, again)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 30)),
              elements=st.floats(-30, 30, allow_nan=False)),
       st.integers(-1, 1))
def test_rounding_keeps_the_sum_and_the_signs(examples, values, nudge):
    examples.ran()
    targets = np.floor(values.sum(axis=1) + 0.5).astype(int) + nudge * (np.abs(values).sum(axis=1) > 2)
    out = round_preserving_sum(values, targets)
    examples.reached()  # no early exit: every example is checked
    assert (out.sum(axis=1) == targets).all()
    assert (np.abs(out - values) < 2).all()
    assert not ((values > 0) & (out < 0)).any()


def test_explain_one_lead_table_and_waterfall(trained, fast_config, scored, tmp_path):
    result, data = trained
    lead = scored.sort_values("score").iloc[-1]["lead_id"]
    rows = feature_rows(data, result.model, AS_OF, fast_config, [lead])
    exp = explain_lead(result.model, rows)
    assert exp.score == int(scored.set_index("lead_id").loc[lead, "score"])
    assert exp.base_score + int(exp.table["points"].sum()) == exp.score
    fig = plot_waterfall(exp)
    fig.savefig(tmp_path / "w.png")
    assert (tmp_path / "w.png").stat().st_size > 5_000


@pytest.mark.slow  # trains a second model (with an extra attribute)
def test_scoring_refuses_data_without_a_feature_the_model_needs(sim_export, fast_config, tmp_path):
    cfg = fast_config.with_overrides(
        features__extra_attributes=[{"table": "leads", "column": "utm_medium", "kind": "categorical"}]
    )
    result = train(load(sim_export, cfg), cfg)
    assert "x_utm_medium" in result.model.spec_.names
    leads = pd.read_csv(sim_export / "leads.csv", dtype=str).drop(columns=["utm_medium"])
    folder = tmp_path / "crm"
    folder.mkdir()
    leads.to_csv(folder / "leads.csv", index=False)
    for t in ("accounts", "events", "stages"):
        (folder / f"{t}.csv").write_bytes((sim_export / f"{t}.csv").read_bytes())
    with pytest.raises(FeatureMismatchError, match="'utm_medium'"):
        score(load(folder, cfg), result.model, AS_OF, Config())
