"""convert: predict which sales leads become clients.

The public API (the CLI is a thin layer over it)::

    import convert
    data = convert.load("data/demo")                      # typed, checked CRM export
    ts = convert.build_training_set(data, config)         # labels + point-in-time features
    result = convert.train(data, config)                  # LightGBM + calibrator + evaluation
    scores = convert.score(data, result.model, "2026-01-01", config)

Heavy or optional dependencies (MLflow, SQLAlchemy, PostgreSQL drivers) are imported
only by the modules at the edges that need them.
"""

from convert.config import Config, load_config
from convert.dataset import CRMData, load
from convert.exceptions import ConvertError
from convert.features import build_features
from convert.labels import build_labels, build_population
from convert.model import LeadScoringModel
from convert.score import score
from convert.train import build_training_set, train

__all__ = [
    "CRMData",
    "Config",
    "ConvertError",
    "LeadScoringModel",
    "build_features",
    "build_labels",
    "build_population",
    "build_training_set",
    "load",
    "load_config",
    "score",
    "train",
]
__version__ = "0.1.0"
