"""The MLflow registry: the only module that talks to MLflow.

Training runs log their parameters, hold-out metrics beside the baselines, the feature
list with the catalog's descriptions, plots and the model bundle as a pyfunc; each model
is registered under its name, and aliases (not the deprecated stages) mark the versions:
a new version becomes ``challenger``, the very first also ``champion``.
:func:`promote` moves ``champion`` when the challenger beats it on the same hold-out.

Tracking uses ``MLFLOW_TRACKING_URI`` when set, else MLflow's default store in the
working directory; URIs are never printed with credentials.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from convert.exceptions import ConvertWarning, ModelNotFoundError
from convert.io.urls import redact_url
from convert.model.bundle import LeadScoringModel, bundle_version

CHAMPION, CHALLENGER = "champion", "challenger"
_LOWER_IS_BETTER = {"log_loss", "brier", "ece"}
#: Where the bundle lies in a registered model's artifacts: logged with the loader module
#: (``data/bundle``), or as *models from code* by convert before it (``artifacts/bundle``).
_BUNDLE_PLACES = ("data/bundle", "artifacts/bundle")


def _mlflow():  # type: ignore[no-untyped-def]
    import mlflow

    return mlflow


def _client():  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    return MlflowClient()


def tracking_uri_for_display() -> str:
    """The tracking URI with any password masked."""
    uri = _mlflow().get_tracking_uri()
    return redact_url(uri)


@dataclass(frozen=True)
class RegisteredModel:
    """A model version in the registry."""

    name: str
    version: str
    run_id: str
    uri: str

    @property
    def label(self) -> str:
        """``name/version``, the ``model_version`` written with every score."""
        return f"{self.name}/{self.version}"


def _flat(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(f"{key}.", v))
        else:
            out[key] = v
    return out


def log_training(
    model: LeadScoringModel,
    name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tables: dict[str, pd.DataFrame],
    figures: dict[str, Any],
    input_example: pd.DataFrame,
    extra_artifacts: dict[str, Path] | None = None,
) -> RegisteredModel:
    """Log one training run and register its model as a new version (alias ``challenger``)."""
    mlflow = _mlflow()
    from mlflow.models import infer_signature

    mlflow.set_experiment(name)
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({k: str(v)[:500] for k, v in _flat("", params).items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
        for label, frame in tables.items():
            path = Path(tmp) / f"{label}.csv"
            frame.to_csv(path, index=False)
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        for label, fig in figures.items():
            mlflow.log_figure(fig, f"plots/{label}.png")
        catalog = model.catalog_.to_frame()[["name", "family", "group", "kind", "unit", "description"]]
        catalog_path = Path(tmp) / "features.csv"
        catalog.to_csv(catalog_path, index=False)
        mlflow.log_artifact(str(catalog_path))
        mlflow.log_dict(model.metadata.to_dict(), "model_card.json")
        for label, path in (extra_artifacts or {}).items():
            mlflow.log_artifact(str(path), artifact_path=label)
        bundle = model.save(Path(tmp) / "bundle")
        example = input_example[model.spec_.names].head(5)
        output = _pyfunc_output(model, example)
        from convert.registry.pyfunc import LOADER_MODULE

        info = mlflow.pyfunc.log_model(
            name="model",
            loader_module=LOADER_MODULE,  # code of the installed package, none in the artifacts
            data_path=str(bundle),
            signature=infer_signature(example, output),
            input_example=example,
            registered_model_name=name,
        )
        version = str(info.registered_model_version)
    client = _client()
    client.set_registered_model_alias(name, CHALLENGER, version)
    aliases = client.get_registered_model(name).aliases
    if CHAMPION not in aliases:
        client.set_registered_model_alias(name, CHAMPION, version)
    return RegisteredModel(name, version, run.info.run_id, f"models:/{name}/{version}")


def _pyfunc_output(model: LeadScoringModel, example: pd.DataFrame) -> pd.DataFrame:
    from convert.model.bundle import score_from_probability

    p = model.predict_proba(example)[:, 1]
    score = score_from_probability(p)
    return pd.DataFrame({"probability": p, "score": score, "grade": model.grades(score)})


def _absent_store() -> str | None:
    """The local registry store (a SQLite file or an ``mlruns`` folder) when it does not exist
    yet, else ``None``.

    MLflow creates a missing local store on first contact (an empty ``mlflow.db`` in the
    working directory, with INFO lines); a command that only reads the registry checks
    first, so it never leaves one behind.
    """
    from urllib.parse import urlparse

    uri = _mlflow().get_registry_uri() or _mlflow().get_tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
        if not database or database == ":memory:":
            return None
        return None if Path(database).exists() else database
    if scheme in ("", "file"):
        path = Path(urlparse(uri).path if scheme == "file" else uri)
        return None if path.exists() else str(path)
    return None


def _require_store(what: str) -> None:
    absent = _absent_store()
    if absent is not None:
        raise ModelNotFoundError(
            f"no {what}: there is no model registry at {absent} (nothing was trained with this "
            "registry yet). Train one with `convert-leads train`, set MLFLOW_TRACKING_URI to the "
            "registry that has it, or pass --model FOLDER for a saved bundle"
        )


def resolve(uri: str) -> RegisteredModel:
    """Resolve ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``NAME`` (its champion)."""
    _require_store(f"model {uri!r}")
    client = _client()
    from mlflow.exceptions import MlflowException

    m = re.fullmatch(r"(?:models:/)?([^@/]+)(?:@([^/]+)|/(\d+))?", uri)
    if not m:
        raise ModelNotFoundError(
            f"model {uri!r} is not a registry URI (models:/NAME@ALIAS or models:/NAME/VERSION) "
            "nor a bundle folder"
        )
    name, alias, version = m.group(1), m.group(2), m.group(3)
    try:
        if version is None:
            mv = client.get_model_version_by_alias(name, alias or CHAMPION)
        else:
            mv = client.get_model_version(name, version)
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"no model {uri!r} in the registry at {tracking_uri_for_display()}: train one with "
            "`convert-leads train` (or set MLFLOW_TRACKING_URI to the registry that has it)"
        ) from exc
    return RegisteredModel(name, str(mv.version), mv.run_id, f"models:/{name}/{mv.version}")


def load_model(uri: str) -> tuple[LeadScoringModel, str]:
    """The model bundle behind *uri* and its ``name/version`` label.

    *uri* is a registry URI (see :func:`resolve`) or a local bundle folder, whose label is
    ``FOLDER/HASH``: the folder's name and a prefix of its manifest hash (so a bundle
    retrained in place writes its scores under a new version).

    A registered model is read by convert's own loader from the bundle files in its
    artifacts (checked against the bundle's manifest); nothing stored with it is executed,
    whichever way it was logged.
    """
    if Path(uri).is_dir():
        model = LeadScoringModel.load(uri)
        return model, f"{Path(uri).resolve().name}/{bundle_version(model)}"
    reg = resolve(uri)
    local = Path(_mlflow().artifacts.download_artifacts(artifact_uri=f"{reg.uri}"))
    bundle = next((local / p for p in _BUNDLE_PLACES if (local / p / "bundle.json").exists()), None)
    if bundle is None:
        raise ModelNotFoundError(
            f"{reg.label} holds no convert bundle ({' or '.join(_BUNDLE_PLACES)} in its artifacts)"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvertWarning)
        model = LeadScoringModel.load(bundle)
    if caught:
        warnings.warn(
            f"{reg.label} was registered before convert checked bundles: its files cannot be "
            "verified (no manifest). Retrain to register a version that carries one",
            ConvertWarning,
            stacklevel=2,
        )
    return model, reg.label


def log_report(run_id: str, report: Path, tables: dict[str, pd.DataFrame], metrics: dict[str, float],
               as_of: pd.Timestamp) -> None:
    """Attach a report (and its tables and headline figures) to a model's training run.

    Artifacts go under ``reports/<as-of date>/``; metrics get the as-of date as their
    step (``YYYYMMDD``), so repeated reports form a drift history on the run.
    """
    client = _client()
    folder = f"reports/{as_of:%Y-%m-%d}"
    client.log_artifact(run_id, str(report), folder)
    with tempfile.TemporaryDirectory() as tmp:
        for label, frame in tables.items():
            path = Path(tmp) / f"{label}.csv"
            frame.to_csv(path, index=False)
            client.log_artifact(run_id, str(path), folder)
    step = int(f"{as_of:%Y%m%d}")
    for key, value in metrics.items():
        if value == value:
            client.log_metric(run_id, key, float(value), step=step)


def load_pyfunc(uri: str):  # type: ignore[no-untyped-def]
    """The MLflow pyfunc of a registered model (plain strings and numbers in).

    The model's ``MLmodel`` is checked first: its pyfunc must be loaded by
    ``convert.registry.pyfunc`` (installed code) with no code paths and no stored Python
    model, or the load is refused. A version registered before convert used the loader
    module (*models from code*) is refused here; :func:`load_model` (the CLI's way)
    still reads its bundle.
    """
    import yaml

    from convert.registry.pyfunc import LEGACY_LOADER_MODULES, LOADER_MODULE

    reg = resolve(uri)
    local = Path(_mlflow().artifacts.download_artifacts(artifact_uri=f"{reg.uri}"))
    try:
        flavor = (yaml.safe_load((local / "MLmodel").read_text()) or {})["flavors"]["python_function"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(f"{reg.label}: its MLmodel file cannot be read ({exc})") from None
    runs_code = [k for k in ("python_model", "code", "model_code_path", "cloudpickle_version")
                 if flavor.get(k)]
    if flavor.get("loader_module") not in (LOADER_MODULE, *LEGACY_LOADER_MODULES) or runs_code:
        raise ModelNotFoundError(
            f"{reg.label} is not loaded by convert's installed code (its MLmodel names loader "
            f"{flavor.get('loader_module')!r}" + (f" and {', '.join(runs_code)}" if runs_code else "")
            + "), so MLflow would run code stored with the model: refused. Versions registered "
            "as models from code are read with convert.registry.store.load_model (the CLI's way); retrain "
            "to register one MLflow can load"
        )
    return _mlflow().pyfunc.load_model(str(local))


def run_metrics(run_id: str) -> dict[str, float]:
    return dict(_client().get_run(run_id).data.metrics)


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    reason: str
    champion: str | None
    challenger: str | None


def promote(name: str, metric: str = "log_loss", min_improvement: float = 0.0) -> Promotion:
    """Move ``champion`` to the challenger when it beats the champion on the same rows.

    Both were judged when the challenger was trained (metrics ``comparison_challenger_<metric>``
    and ``comparison_champion_<metric>`` of its run): on labelled as-of times newer than both
    training cut-offs, scored by both deployed models, or, when there were none, both recipes
    on the challenger's outer folds (the champion's refitted there). The run's ``comparison``
    parameter says which, and the reason repeats it.
    """
    _require_store(f"registered model named {name!r}")
    client = _client()
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as exc:
        raise ModelNotFoundError(f"no registered model named {name!r}; train one first") from exc
    champ, chall = (str(v) if v is not None else None for v in (aliases.get(CHAMPION), aliases.get(CHALLENGER)))
    if chall is None:
        return Promotion(False, "there is no challenger version", champ, None)
    if champ == chall:
        return Promotion(False, f"version {chall} is already the champion", champ, chall)
    run = client.get_run(client.get_model_version(name, chall).run_id)
    m = dict(run.data.metrics)
    ours, theirs = m.get(f"comparison_challenger_{metric}"), m.get(f"comparison_champion_{metric}")
    where = run.data.params.get("comparison", "the challenger's hold-out")
    if ours is None or theirs is None:
        return Promotion(
            False,
            f"the challenger's run has no comparison with champion version {champ} "
            f"(comparison_challenger_{metric} / comparison_champion_{metric}); retrain to compare",
            champ, chall,
        )
    better = (theirs - ours) if metric in _LOWER_IS_BETTER else (ours - theirs)
    verdict = (
        f"challenger {name}/{chall} {metric}={ours:.5f} vs champion {name}/{champ} "
        f"{metric}={theirs:.5f} on {where} (improvement {better:+.5f}, "
        f"required > {min_improvement})"
    )
    if better > min_improvement:
        client.set_registered_model_alias(name, CHAMPION, chall)
        return Promotion(True, "promoted: " + verdict, chall, chall)
    return Promotion(False, "kept the champion: " + verdict, champ, chall)


def champion_exists(name: str) -> bool:
    if _absent_store() is not None:
        return False
    client = _client()
    from mlflow.exceptions import MlflowException

    try:
        return CHAMPION in client.get_registered_model(name).aliases
    except MlflowException:
        return False


os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
