"""``convert-leads explain``: one lead's score in points and reasons, with a waterfall plot; with
``--since``, the exact movements of its score between two times."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from convert.analysis.plots import plot_change_waterfall, plot_waterfall
from convert.config import Config
from convert.exceptions import ConfigError, ContractError
from convert.io.artifacts import save_figure
from convert.model.explain import LeadExplanation, explain_lead
from convert.schema import ScoreOutput
from convert.scoring.changes import PREVIOUS_AS_OF, LeadChange, lead_change, previous_features
from convert.sources.base import FlatOptions, is_flat_path
from convert.sources.export import CRMData
from convert.sources.mapping import Mapping
from convert.steps.common import (
    Echo,
    Input,
    _quiet,
    check_model,
    load_model,
    model_name_for,
    open_data,
)


def explain_step(
    data_path: str | Path, config: Config, as_of: pd.Timestamp | None, lead_id: str, model_uri: str | None = None,
    plot: str | Path | None = None, rejects: str | None = None, echo: Echo = _quiet,
    mapping: Mapping | None = None, *, id_column: str | None = None, since: pd.Timestamp | None = None,
) -> LeadExplanation | LeadChange:
    """Explain one lead's score at *as_of* (a flat table: its row, by its id) and write a
    waterfall plot to *plot*.

    With *since*, explain instead how the score moved from *since* to *as_of*: both scores
    under this one model (so no model-update movement), each feature's movement in integer
    points that add up to the change exactly (:func:`convert.scoring.changes.lead_change`),
    and a waterfall from the score then to the score now.
    """
    if since is not None and is_flat_path(data_path):
        raise ConfigError(
            f"--since compares a lead's score at two as-of times, which needs a CRM export's event history; "
            f"{data_path} is a flat table (one row per lead), with no earlier as-of to recompute: drop --since"
        )
    data = Input(data_path, mapping, rejects, flat=FlatOptions(id_column=id_column))
    model, label, _ = load_model(model_uri, model_name_for(data, config), echo)
    source = open_data(data, config, echo, "score", trained=model)
    then = None
    try:
        check_model(source, model, label, config)
        t = source.scoring_as_of(as_of, "explain a lead of a CRM export")
        if since is not None and since >= t:
            raise ConfigError(f"--since {since} is not earlier than --as-of {t}: give a --since before the as-of "
                              "(e.g. the previous scoring run's as-of)")
        rows = source.scoring_rows(t, model.features_config(config.features), model.spec_.event_types,
                                   model.metadata, [lead_id])
        where = source.display
        if not rows.empty and since is not None:
            assert isinstance(source, CRMData)  # flat tables were refused above
            at_since = pd.DataFrame({ScoreOutput.lead_id: [lead_id], PREVIOUS_AS_OF: [since]})
            then = previous_features(source, model, at_since, config)  # the rows `score` compares with
    finally:
        source.close()
    if rows.empty:
        raise ContractError(
            f"lead {lead_id!r} is not in the population at {t} of {where} (unknown, not yet created, "
            "converted or disqualified before then; a flat table: no row has this id)",
            column="lead_id",
        )
    if since is None or then is None:
        explanation = explain_lead(model, rows.reset_index(drop=True))
        if plot:
            save_figure(plot_waterfall(explanation), plot)
        return explanation
    if then.empty:
        raise ContractError(
            f"lead {lead_id!r} was not in the population at --since {since} of {where} (not yet created then, "
            f"or converted or disqualified before then), so its score then does not exist: choose a --since "
            f"after the lead was created (explain it at {t} without --since to see its score now)",
            column="lead_id",
        )
    change = lead_change(model, rows.reset_index(drop=True), then, config.scoring, label)
    if plot:
        save_figure(plot_change_waterfall(change.lead_id, change.score_then, change.score_now, change.table,
                                          f"{since:%Y-%m-%d}", f"{t:%Y-%m-%d}"), plot)
    return change

