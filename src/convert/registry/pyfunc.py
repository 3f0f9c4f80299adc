"""The MLflow pyfunc of a convert model, loaded by code of the installed package.

A model is logged with ``loader_module="convert.registry.pyfunc"`` and the bundle folder
(booster text, calibrator and spec JSON, manifest) as its data: MLflow imports this module
from the installed ``convert`` package and calls :func:`_load_pyfunc` on the bundle. No
Python travels with the model, so whoever can write to the artifact store cannot make a
machine that loads the model run code (versions registered before this, as *models from
code*, stored a Python file that MLflow executed; convert itself reads their bundle only).

``predict`` takes plain strings and numbers (one column per feature, named as the model's
feature spec), applies the stored training categories inside, and returns
``probability``, ``score`` and ``grade``. Nothing is pickled.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from convert.model.bundle import LeadScoringModel, score_from_probability

#: The module MLflow imports to load a convert model (the ``loader_module`` of its MLmodel).
LOADER_MODULE = __name__
#: Earlier names of this module, still importable so that versions logged under them load.
LEGACY_LOADER_MODULES = ("convert.mlflow_model",)


class LeadScoringPyfunc:
    """Probability, score and grade from a frame of feature values."""

    def __init__(self, model: LeadScoringModel) -> None:
        self.model = model

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        p = self.model.predict_proba(model_input)[:, 1]
        score = score_from_probability(p)
        return pd.DataFrame({"probability": p, "score": score, "grade": self.model.grades(score)})


def _load_pyfunc(data_path: str) -> LeadScoringPyfunc:
    """MLflow's entry point: the bundle folder the model was logged with, checked against its
    manifest (:meth:`LeadScoringModel.load`)."""
    return LeadScoringPyfunc(LeadScoringModel.load(data_path))
