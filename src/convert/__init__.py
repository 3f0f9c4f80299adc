"""convert: predict which sales leads become clients.

The public API (the CLI is a thin layer over it)::

    import convert
    data = convert.load("data/demo")                      # typed, checked CRM export
    ts = convert.build_training_set(data, config)         # labels + point-in-time features
    result = convert.train(data, config)                  # LightGBM + calibrator + evaluation
    scores = convert.score(data, result.model, "2026-01-01", config)

    mapping = convert.load_mapping("docs/mappings/hubspot.yaml")   # a CRM's own export
    data = convert.load("hubspot_export/", config, mapping=mapping)  # or a database URL
    table = convert.load_flat("report.csv", config, target="Converted")  # a flat table
    result = convert.train_flat(table, config)                      # leakage guard first
    source = convert.open_source("data/demo", config)     # an export or a flat file, as a LeadSource

Heavy or optional dependencies (MLflow, SQLAlchemy, PostgreSQL drivers) are imported
only by the modules at the edges that need them.
"""

from convert.config import Config, load_config
from convert.exceptions import ConvertError
from convert.features.engine import build_features
from convert.features.labels import build_labels, build_population
from convert.model.bundle import LeadScoringModel
from convert.model.leakage import screen
from convert.model.train import build_training_set, train, train_flat
from convert.scoring.score import score
from convert.sources.base import LeadSource, open_source
from convert.sources.export import CRMData, load
from convert.sources.flat import load_flat
from convert.sources.mapping import load_mapping

__all__ = [
    "CRMData",
    "Config",
    "ConvertError",
    "LeadScoringModel",
    "LeadSource",
    "build_features",
    "build_labels",
    "build_population",
    "build_training_set",
    "load",
    "load_config",
    "load_flat",
    "load_mapping",
    "open_source",
    "score",
    "screen",
    "train",
    "train_flat",
]
__version__ = "0.1.0"
