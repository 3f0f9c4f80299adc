"""The bundle's metadata is a typed record: attributes, the JSON keys kept, unknown keys kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from convert.metadata import BundleMetadata, Calibration, DeployedFit

#: metadata as an event-mode bundle saved before the typed record wrote it (abridged), plus a
#: key no convert writes (a newer version's)
SAVED = {
    "training_as_of": "2025-10-02T00:00:00",
    "horizon_days": 90,
    "frequency": "monthly",
    "as_of_grid": None,
    "design": "time-series cross-fitting",
    "deployed_fit": {"from": "2023-04-01", "to": "2025-07-01", "rows": 30000, "positives": 500},
    "choices": {"rounds": 120, "blend_weight": 0.0, "calibration": "platt", "tune_trials": 0},
    "calibration": {"method": "platt", "cv_log_loss": {"platt": 0.0712, "isotonic": None}},
    "holdout_metrics": {"log_loss": 0.07, "roc_auc": None},
    "params": {"objective": "binary", "learning_rate": 0.05},
    "rounds": 120,
    "blend_weight": 0.0,
    "seed": 42,
    "features_config": {"windows_days": [7, 30, 90]},
    "leakage": {"rows": 10},
    "written_by_a_newer_convert": {"anything": [1, 2]},
}


def test_saved_metadata_reads_as_attributes_and_writes_back_unchanged():
    meta = BundleMetadata.of(json.loads(json.dumps(SAVED)))
    assert isinstance(meta.deployed_fit, DeployedFit) and meta.deployed_fit.to == "2025-07-01"
    assert isinstance(meta.calibration, Calibration) and meta.calibration.method == "platt"
    assert meta.choices is not None and meta.choices.rounds == 120
    assert meta.horizon_days == 90 and meta.flat is None and not meta.is_flat
    # the same keys in the same order, the unknown one last and as it was
    assert json.dumps(meta.to_dict()) == json.dumps(SAVED)


def test_no_dictionary_access_and_assigned_entries_are_saved():
    meta = BundleMetadata.of(SAVED)
    assert meta.deployed_fit is not None and meta.deployed_fit.from_ == "2023-04-01"
    assert meta.trained_at is None and meta.mode is None
    assert meta.to_dict()["written_by_a_newer_convert"] == {"anything": [1, 2]}
    with pytest.raises(TypeError):
        meta["deployed_fit"]  # type: ignore[index]  # entries are attributes, a typo fails loudly
    meta.leakage = {"rows": 11}
    meta.retrained = "yes"  # an entry this convert does not know is kept and saved
    assert meta.to_dict()["leakage"] == {"rows": 11} and meta.to_dict()["retrained"] == "yes"


def test_a_trainer_may_hand_over_numpy_numbers():
    meta = BundleMetadata.of({"rounds": np.int64(7), "blend_weight": np.float64(0.3), "purged_rows": np.int32(2)})
    assert meta.rounds == 7 and type(meta.rounds) is int and meta.blend_weight == 0.3
    assert list(meta.to_dict()) == ["purged_rows", "rounds", "blend_weight"]


def test_a_known_key_of_the_wrong_shape_is_refused():
    with pytest.raises(ValidationError):
        BundleMetadata.of({"deployed_fit": "2023 to 2025"})
