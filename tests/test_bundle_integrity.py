"""Issue 14, finding 4: a damaged model bundle is a clear exit-2 error, never bad scores.

A bundle carries ``manifest.json`` with the SHA-256 of every file, checked before anything
reaches LightGBM (whose parser aborts or crashes the process on a truncated model). Scores
are never produced without the calibrator trained with the booster. A bundle written
before manifests loads with a warning saying how to re-save it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from convert.exceptions import BundleError, ConvertWarning
from convert.model.bundle import MANIFEST, LeadScoringModel, bundle_version
from convert.registry.store import load_model


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory) -> Path:
    result, _ = trained
    return result.model.save(tmp_path_factory.mktemp("bundles") / "lead-conversion")


@pytest.fixture
def bundle(saved, tmp_path) -> Path:
    folder = tmp_path / "lead-conversion"
    shutil.copytree(saved, folder)
    return folder


def score_cli(bundle: Path, data: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "convert", "score", "--data", str(data), "--as-of", "2025-07-01",
         "--out", str(cwd / "s.parquet"), "--model", str(bundle)],
        cwd=cwd, env={**env, "OMP_WAIT_POLICY": "PASSIVE"}, capture_output=True, text=True, timeout=300,
    )


def test_a_saved_bundle_lists_every_file_and_its_version_is_the_manifest_hash(saved, trained, bundle):
    manifest = json.loads((saved / MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["booster.txt", "bundle.json", "calibrator.json", "outer_predictions.csv"]
    model, label = load_model(str(bundle))
    assert label == f"lead-conversion/{bundle_version(model)}" and len(bundle_version(model)) == 12
    # the same model saved again: the same version; retrained in place: a new one
    result, data = trained
    again = result.model.save(bundle)
    assert load_model(str(again))[1] == label
    other = LeadScoringModel.load(bundle)
    other.metadata.seed = 12345
    other.save(bundle)
    assert load_model(str(bundle))[1] != label
    x = result.training_set.frame.head(50)
    assert np.array_equal(other.predict_proba(x), result.model.predict_proba(x))


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda b: (b / "calibrator.json").unlink(), "calibrator.json is missing"),
        (lambda b: (b / "booster.txt").write_bytes((b / "booster.txt").read_bytes()[:30000]), "booster.txt is damaged"),
        (lambda b: (b / "bundle.json").write_text((b / "bundle.json").read_text().replace('"seed": 42', '"seed": 7')),
         "bundle.json is damaged"),
        (lambda b: (b / "notes.txt").write_text("hello"), "notes.txt is not part of the bundle"),
        (lambda b: (b / "booster.txt").unlink(), "booster.txt is missing"),
        (lambda b: (b / MANIFEST).write_text("{not json"), "manifest.json cannot be read"),
    ],
    ids=["no-calibrator", "truncated-booster", "altered-json", "extra-file", "no-booster", "bad-manifest"],
)
def test_a_damaged_bundle_is_an_error_naming_the_file(bundle, damage, needle):
    damage(bundle)
    with pytest.raises(BundleError, match=needle.replace(".", r"\.")) as info:
        LeadScoringModel.load(bundle)
    assert info.value.exit_code == 2


def _legacy(bundle: Path) -> Path:
    """The bundle as convert wrote it before manifests (no manifest.json, no calibrated flag)."""
    (bundle / MANIFEST).unlink()
    data = json.loads((bundle / "bundle.json").read_text())
    data.pop("calibrated")
    (bundle / "bundle.json").write_text(json.dumps(data, indent=1))
    return bundle


def test_a_bundle_from_before_manifests_loads_with_a_warning_saying_how_to_resave(bundle, trained):
    legacy = _legacy(bundle)
    with pytest.warns(ConvertWarning, match=r"no manifest\.json.*Re-save it once") as caught:
        model = LeadScoringModel.load(legacy)
    assert str(legacy) in str(caught[0].message)
    x = trained[0].training_set.frame.head(20)
    assert np.array_equal(model.predict_proba(x), trained[0].model.predict_proba(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.save(legacy)  # the command the warning gives
        LeadScoringModel.load(legacy)
    assert (legacy / MANIFEST).exists()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda b: (b / "calibrator.json").unlink(), "calibrator.json is missing"),
        (lambda b: (b / "booster.txt").write_bytes((b / "booster.txt").read_bytes()[:30000]), "truncated"),
        (lambda b: (b / "bundle.json").write_text("{\"params\": "), "bundle.json is not valid JSON"),
        (lambda b: (b / "bundle.json").write_text(json.dumps({"params": {}})), "lacks the key 'num_boost_round'"),
    ],
    ids=["no-calibrator", "truncated-booster", "invalid-json", "missing-key"],
)
def test_a_damaged_bundle_from_before_manifests_is_an_error_too(bundle, damage, needle):
    legacy = _legacy(bundle)
    damage(legacy)
    with pytest.warns(ConvertWarning), pytest.raises(BundleError, match=needle):
        LeadScoringModel.load(legacy)


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "legacy"])
@pytest.mark.slow
def test_score_with_a_truncated_booster_exits_2_instead_of_aborting(bundle, sim_export, tmp_path, manifest):
    """Before: SIGABRT (rc 134) or a segmentation fault inside LightGBM's parser."""
    folder = bundle if manifest else _legacy(bundle)
    (folder / "booster.txt").write_bytes((folder / "booster.txt").read_bytes()[:30000])
    result = score_cli(folder, sim_export, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "booster.txt" in result.stderr and "Traceback" not in result.stderr
    assert ("warning: the model bundle" in result.stderr) is not manifest
    assert not (tmp_path / "s.parquet").exists()


@pytest.mark.slow
def test_score_without_the_calibrator_refuses_instead_of_scoring_uncalibrated(bundle, sim_export, tmp_path):
    (bundle / "calibrator.json").unlink()
    result = score_cli(bundle, sim_export, tmp_path)
    assert result.returncode == 2 and "calibrator.json is missing" in result.stderr
    assert not (tmp_path / "s.parquet").exists()


def test_a_bundle_saved_with_unknown_metadata_keys_loads_and_keeps_them(bundle):
    legacy = _legacy(bundle)
    data = json.loads((legacy / "bundle.json").read_text())
    data["metadata"]["written_by_a_newer_convert"] = {"x": 1}
    (legacy / "bundle.json").write_text(json.dumps(data, indent=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvertWarning)
        model = LeadScoringModel.load(legacy)
    assert model.metadata.deployed_fit is not None and model.metadata.choices is not None
    assert model.metadata.to_dict() == data["metadata"]


def test_a_bundle_with_malformed_metadata_is_an_error_naming_the_entry(bundle):
    legacy = _legacy(bundle)
    data = json.loads((legacy / "bundle.json").read_text())
    data["metadata"]["deployed_fit"] = "last year"
    (legacy / "bundle.json").write_text(json.dumps(data, indent=1))
    with warnings.catch_warnings(), pytest.raises(BundleError, match="malformed metadata.*deployed_fit") as info:
        warnings.simplefilter("ignore", ConvertWarning)  # no manifest: said, then the metadata refused
        LeadScoringModel.load(legacy)
    assert info.value.exit_code == 2
