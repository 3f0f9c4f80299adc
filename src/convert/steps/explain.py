"""``convert-leads explain``: one lead's score in points and reasons, with a waterfall plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from convert.analysis.plots import plot_waterfall
from convert.config import Config
from convert.exceptions import ContractError
from convert.io.artifacts import save_figure
from convert.model.explain import LeadExplanation, explain_lead
from convert.sources.base import FlatOptions
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
    mapping: Mapping | None = None, *, id_column: str | None = None,
) -> LeadExplanation:
    """Explain one lead's score at *as_of* (a flat table: its row, by its id) and write a
    waterfall plot to *plot*."""
    data = Input(data_path, mapping, rejects, flat=FlatOptions(id_column=id_column))
    model, label, _ = load_model(model_uri, model_name_for(data, config), echo)
    source = open_data(data, config, echo, "score", trained=model)
    try:
        check_model(source, model, label, config)
        t = source.scoring_as_of(as_of, "explain a lead of a CRM export")
        rows = source.scoring_rows(t, model.features_config(config.features), model.spec_.event_types,
                                   model.metadata, [lead_id])
        where = source.display
    finally:
        source.close()
    if rows.empty:
        raise ContractError(
            f"lead {lead_id!r} is not in the population at {t} of {where} (unknown, not yet created, "
            "converted or disqualified before then; a flat table: no row has this id)",
            column="lead_id",
        )
    explanation = explain_lead(model, rows.reset_index(drop=True))
    if plot:
        save_figure(plot_waterfall(explanation), plot)
    return explanation
