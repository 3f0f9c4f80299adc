"""The MLflow pyfunc of a convert model, logged as *models from code*.

MLflow loads this file and calls :func:`mlflow.models.set_model` below; the model bundle
(booster text, calibrator and spec JSON) travels as the artifact ``bundle``. ``predict``
takes plain strings and numbers (one column per feature, named as the model's feature
spec), applies the stored training categories inside, and returns ``probability``,
``score`` and ``grade``. Nothing is pickled.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from convert.model import LeadScoringModel, score_from_probability


class LeadScoringPyfunc(PythonModel):  # type: ignore[misc]
    """Probability, score and grade from a frame of feature values."""

    def load_context(self, context: PythonModelContext) -> None:
        self.model = LeadScoringModel.load(context.artifacts["bundle"])

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:  # noqa: E501
        p = self.model.predict_proba(model_input)[:, 1]
        score = score_from_probability(p)
        return pd.DataFrame({"probability": p, "score": score, "grade": self.model.grades(score)})


mlflow.models.set_model(LeadScoringPyfunc())
