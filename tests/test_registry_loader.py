"""Issue 14, finding 9: a registered model is loaded by installed code, never by code in the
artifact store.

Models are logged with ``loader_module="convert.registry.pyfunc"``: MLflow imports the module
from the installed package and hands it the bundle. Whoever can write to the artifact store
can damage a model (an exit-2 error) but cannot make a machine that loads it run code.
Versions registered before (*models from code*, whose stored ``mlflow_model.py`` MLflow
executes) still load in the CLI, which reads their bundle and runs nothing stored.
"""

from __future__ import annotations

import json
import pickle
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from convert.exceptions import ConvertError, ConvertWarning
from convert.model.bundle import MANIFEST
from convert.registry import store as registry


class _Payload:
    """Unpickling this runs code: it writes the sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.sentinel, "pickle ran"))


def _source(sentinel: Path) -> str:
    return f"import pathlib\npathlib.Path({str(sentinel)!r}).write_text('artifact code ran')\n"


def _log(result, name: str):
    hold = result.training_set.frame.loc[result.split.masks["holdout"]]
    return registry.log_training(result.model, name, params={"seed": 1}, metrics={}, tables={}, figures={},
                                 input_example=hold)


def _model_dir(root: Path) -> Path:
    """The logged model's folder in the (local) artifact store."""
    found = _model_dirs(root)
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_the_registered_model_names_the_installed_loader_and_stores_no_code(trained, mlflow_store, tmp_path):
    result, _ = trained
    _log(result, "lead-safe")
    folder = _model_dir(tmp_path)
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "convert.registry.pyfunc"
    assert not flavor.get("python_model") and not flavor.get("code")
    assert not [p for p in folder.rglob("*") if p.suffix in (".py", ".pkl", ".pyc", ".cloudpickle")]
    # MLflow's own loader goes through the installed module and gives the model's numbers
    import mlflow

    hold = result.training_set.frame.loc[result.split.masks["holdout"]].head(200)
    out = mlflow.pyfunc.load_model("models:/lead-safe@champion").predict(hold[result.model.spec_.names])
    assert np.array_equal(out["probability"].to_numpy(), result.model.predict_proba(hold)[:, 1])


@pytest.mark.slow
def test_tampering_with_every_artifact_runs_no_code_on_load(trained, mlflow_store, tmp_path):
    result, _ = trained
    _log(result, "lead-tampered")
    folder = _model_dir(tmp_path)
    sentinel = tmp_path / "SENTINEL"
    source = _source(sentinel)
    payload = pickle.dumps(_Payload(sentinel))
    assert not sentinel.exists()
    exec(compile(source, "payload", "exec"))  # the payloads work when something runs them
    pickle.loads(payload)
    assert sentinel.exists()
    sentinel.unlink()

    # 1. every file but MLmodel replaced by code (bundle included), plus stored-code files
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != "MLmodel"]
    assert {"booster.txt", "bundle.json", "calibrator.json", MANIFEST} <= {p.name for p in files}
    for path in files:
        path.write_bytes(payload if path.suffix == ".pkl" else source.encode())
    (folder / "mlflow_model.py").write_text(source)
    (folder / "python_model.pkl").write_bytes(payload)
    for load in (registry.load_model, registry.load_pyfunc):
        with pytest.raises(ConvertError):
            load("models:/lead-tampered@champion")
    import mlflow

    with pytest.raises(ConvertError):  # MLflow's own loader: the installed module refuses the bundle
        mlflow.pyfunc.load_model("models:/lead-tampered@champion")
    assert not sentinel.exists()

    # 2. MLmodel rewritten to make MLflow run the stored code: convert refuses to hand it over
    before = set(_model_dirs(tmp_path))
    _log(result, "lead-redirected")
    (folder,) = set(_model_dirs(tmp_path)) - before
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"].update(
        {"loader_module": "mlflow.pyfunc.model", "python_model": "python_model.pkl", "code": "code"})
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    (folder / "python_model.pkl").write_bytes(payload)
    (folder / "code").mkdir()
    (folder / "code" / "convert_payload.py").write_text(source)
    with pytest.raises(ConvertError, match="refused"):
        registry.load_pyfunc("models:/lead-redirected@champion")
    model, label = registry.load_model("models:/lead-redirected@champion")  # the CLI reads the bundle only
    assert label == "lead-redirected/1" and model.booster_.num_trees() > 0
    assert not sentinel.exists()


def _model_dirs(root: Path) -> list[Path]:
    return [p.parent for p in root.rglob("MLmodel") if "mlartifacts" in p.parts or "mlruns" in p.parts]


OLD_LOADER = '''
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from convert.model.bundle import LeadScoringModel, score_from_probability


class LeadScoringPyfunc(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        self.model = LeadScoringModel.load(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        p = self.model.predict_proba(model_input)[:, 1]
        score = score_from_probability(p)
        return pd.DataFrame({"probability": p, "score": score, "grade": self.model.grades(score)})


mlflow.models.set_model(LeadScoringPyfunc())
'''


@pytest.mark.slow
def test_a_version_registered_as_models_from_code_still_loads_in_the_cli_without_running_it(
    trained, mlflow_store, tmp_path, capsys
):
    """The layout convert registered before: MLflow executes the stored file; convert does not."""
    import mlflow

    result, _ = trained
    sentinel = tmp_path / "SENTINEL"
    code = tmp_path / "mlflow_model.py"
    code.write_text(_source(sentinel) + textwrap.dedent(OLD_LOADER))
    bundle = result.model.save(tmp_path / "bundle")
    (bundle / MANIFEST).unlink()  # bundles had no manifest then
    data = json.loads((bundle / "bundle.json").read_text())
    data.pop("calibrated")
    (bundle / "bundle.json").write_text(json.dumps(data))
    mlflow.set_experiment("legacy")
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=str(code), artifacts={"bundle": str(bundle)},
                                registered_model_name="lead-legacy")
    mlflow.MlflowClient().set_registered_model_alias("lead-legacy", "champion", "1")
    shutil.rmtree(bundle)
    sentinel.unlink(missing_ok=True)  # MLflow may run the file while logging it

    with pytest.warns(ConvertWarning, match="registered before convert checked bundles"):
        model, label = registry.load_model("models:/lead-legacy@champion")
    assert label == "lead-legacy/1" and not sentinel.exists()
    hold = result.training_set.frame.loc[result.split.masks["holdout"]].head(100)
    assert np.array_equal(model.predict_proba(hold), result.model.predict_proba(hold))
    with pytest.raises(ConvertError, match="refused"):
        registry.load_pyfunc("models:/lead-legacy@champion")
    assert not sentinel.exists()
    # what the issue reported: MLflow's own loader executes the stored Python
    mlflow.pyfunc.load_model("models:/lead-legacy@champion")
    assert sentinel.exists()
