"""Time-series cross-fitting: folds, nested choices, out-of-fold calibration, the deployed refit.

One training design for event mode and flat mode. The labelled rows are cut into test blocks
(*folds*); fold ``i`` fits on the rows allowed before its block and predicts the block:

* event mode -- forward chaining over as-of times: a fold fits only on snapshots whose label
  horizon ended before the block's first as-of time (``as_of <= first - horizon``: the
  purge), so no label used for fitting was decided inside the period it predicts;
* flat ``--split ordered`` -- forward chaining in file order (rows are in time order);
* flat ``--split random`` -- stratified, seeded blocks; a fold fits on the other blocks.

Blocks are cut from the latest backwards, each holding at least ``train.fold_share`` of the
conversions (and at least ``train.min_positives`` of them) and of the rows, so a growing
population (most rows late) does not starve the early folds and every fold can be judged.

**Nested.** The last ``train.outer_folds`` folds are *outer*: their figures are reported and
compared with the baselines, and nothing was chosen on them. Every choice is made on the
*inner* folds before them: the boosting rounds (the round minimising the mean inner-fold log
loss after a per-fold shift of the level -- a drifting base rate is the calibrator's job --
boosters run in lockstep, so one drifting slice cannot stop training after two rounds),
the parameters (``--tune``: the configured parameters are always candidate 0, so tuning can
only win on the inner folds), the log-odds blend weight with the logistic model
(:mod:`convert.model.linear`), and the calibrator (isotonic or sigmoid by cross-validated log loss
on the inner folds' out-of-fold scores). The outer folds are then fitted with exactly these
settings and scored through the inner calibrator.

**Deployed.** The booster (and the linear model) are refitted on every labelled row (event
mode: every snapshot up to ``as_of - horizon``) with the chosen settings; its calibrator is
fitted on all out-of-fold scores (inner and outer) with the chosen method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from convert.config import Config
from convert.exceptions import InsufficientDataError
from convert.model.baselines import Baseline
from convert.model.bundle import FeatureMatrix, FeatureSpec, LeadScoringModel
from convert.model.calibrate import Calibrator, SigmoidCalibrator, select_calibrator
from convert.model.linear import LinearScorer
from convert.model.metrics import evaluate

__all__ = ["CrossFit", "Fold", "Folds", "cross_fit", "ordered_folds", "random_folds", "time_folds"]

#: Blend weights of the logistic model tried on the inner folds (0: LightGBM alone).
BLEND_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


# --- folds ---------------------------------------------------------------------------------------


@dataclass
class Fold:
    """One fold: the rows it fits on and the rows it predicts, and what they span."""

    name: str
    kind: str  # "inner" (choices) or "outer" (reported figures)
    train: np.ndarray
    test: np.ndarray
    train_span: tuple[str, str]
    test_span: tuple[str, str]


@dataclass
class Folds:
    """The folds of one training run and the rows the deployed model learns from.

    ``masks`` and ``ranges`` keep the names the report and the CLI read: ``holdout`` is the
    outer folds' rows (the figures reported), ``train`` every row the deployed model learned from.
    """

    folds: list[Fold]
    deploy: np.ndarray
    n_rows: int
    mode: str  # "time", "ordered" or "random"
    purged: int = 0
    deploy_span: tuple[str, str] = ("", "")

    @property
    def inner(self) -> list[Fold]:
        return [f for f in self.folds if f.kind == "inner"]

    @property
    def outer(self) -> list[Fold]:
        return [f for f in self.folds if f.kind == "outer"]

    def mask(self, rows: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n_rows, dtype=bool)
        out[rows] = True
        return out

    @property
    def masks(self) -> dict[str, np.ndarray]:
        outer = np.concatenate([f.test for f in self.outer]) if self.outer else np.array([], dtype="int64")
        return {"holdout": self.mask(outer), "train": self.mask(self.deploy)}

    @property
    def ranges(self) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
        if self.mode != "time":
            return {}
        outer = self.outer
        return {"holdout": (pd.Timestamp(outer[0].test_span[0]), pd.Timestamp(outer[-1].test_span[1])),
                "train": (pd.Timestamp(self.deploy_span[0]), pd.Timestamp(self.deploy_span[1]))}

    def summary(self, labels: np.ndarray) -> pd.DataFrame:
        """One row per fold (and one for the deployed model): spans, rows and conversions."""
        rows = []
        for f in self.folds:
            rows.append({"fold": f.name, "kind": f.kind, "fits_from": f.train_span[0], "fits_to": f.train_span[1],
                         "fit_rows": len(f.train), "fit_positives": int(labels[f.train].sum()),
                         "predicts_from": f.test_span[0], "predicts_to": f.test_span[1],
                         "rows": len(f.test), "positives": int(labels[f.test].sum())})
        rows.append({"fold": "deployed", "kind": "refit", "fits_from": self.deploy_span[0],
                     "fits_to": self.deploy_span[1], "fit_rows": len(self.deploy),
                     "fit_positives": int(labels[self.deploy].sum()), "predicts_from": "", "predicts_to": "",
                     "rows": 0, "positives": 0})
        return pd.DataFrame(rows)


def _blocks_from_end(
    positives: np.ndarray, n_blocks: int, target: int, rows: np.ndarray | None = None, target_rows: int = 0
) -> list[tuple[int, int]] | None:
    """Cut units (as-of times or rows, in order) into *n_blocks* consecutive blocks from the end,
    each the fewest units holding at least *target* positives and *target_rows* rows; ``None``
    when the positives run out."""
    blocks: list[tuple[int, int]] = []
    hi = len(positives)
    sizes = np.ones(len(positives), dtype="int64") if rows is None else rows
    for _ in range(n_blocks):
        held, size, lo = 0, 0, hi
        while lo > 0 and (held < target or size < target_rows):
            lo -= 1
            held += int(positives[lo])
            size += int(sizes[lo])
        if held < target:
            return None
        blocks.append((lo, hi))
        hi = lo
    return blocks[::-1]


def _fold_target(total_positives: int, config: Config) -> int:
    return max(config.train.min_positives, math.ceil(config.train.fold_share * total_positives))


def _date(t: Any) -> str:
    return f"{pd.Timestamp(t):%Y-%m-%d}"


def time_folds(as_of: pd.Series, labels: np.ndarray, horizon_days: int, config: Config) -> Folds:
    """Forward-chaining folds over as-of times, purged by the horizon (see the module doc).

    Raises
    ------
    InsufficientDataError
        With the as-of times, the conversions per fold and a setting that would train.
    """
    folds, problem = _time_folds(as_of, labels, horizon_days, config)
    if folds is not None:
        return folds
    raise InsufficientDataError(problem + _what_would_work(
        lambda cfg: _time_folds(as_of, labels, horizon_days, cfg)[0] is not None, config,
        event_mode=True))


def _time_folds(
    as_of: pd.Series, labels: np.ndarray, horizon_days: int, config: Config
) -> tuple[Folds | None, str]:
    values = pd.to_datetime(as_of).to_numpy()
    times, inverse = np.unique(values, return_inverse=True)
    pos_per_time = np.bincount(inverse, weights=labels, minlength=len(times)).astype("int64")
    total = int(pos_per_time.sum())
    n_outer, n_inner = config.train.outer_folds, config.train.inner_folds
    target = _fold_target(total, config)
    rows_per_time = np.bincount(inverse, minlength=len(times))
    blocks = _blocks_from_end(pos_per_time, n_inner + n_outer, target, rows_per_time,
                              math.ceil(config.train.fold_share * len(values)))
    horizon = np.timedelta64(horizon_days, "D")
    figures = (f"{len(times)} labelled as-of times ({_date(times[0]) if len(times) else '-'} to "
               f"{_date(times[-1]) if len(times) else '-'}) hold {total} conversions")
    if blocks is None:
        return None, (f"{figures}: too few for {n_inner} inner and {n_outer} outer folds of at least "
                      f"{target} conversions each (train.fold_share={config.train.fold_share}, "
                      f"train.min_positives={config.train.min_positives}).")
    out: list[Fold] = []
    purged = 0
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(times) + 1))
    rows_of = [order[starts[i]:starts[i + 1]] for i in range(len(times))]
    for k, (lo, hi) in enumerate(blocks):
        cutoff = times[lo] - horizon
        fit_times = np.flatnonzero(times <= cutoff)
        purged += int(sum(len(rows_of[i]) for i in range(lo) if times[i] > cutoff))
        fit_pos = int(pos_per_time[fit_times].sum())
        kind = "inner" if k < n_inner else "outer"
        name = f"{kind} {k + 1 if kind == 'inner' else k - n_inner + 1}"
        if fit_pos < config.train.min_positives:
            per_fold = ", ".join(str(int(pos_per_time[a:b].sum())) for a, b in blocks)
            return None, (f"{figures}; conversions per fold: {per_fold}. The first fold predicts from "
                          f"{_date(times[lo])}, and the snapshots whose {horizon_days}-day horizon ended "
                          f"before it ({len(fit_times)} as-of times) hold {fit_pos} conversions, fewer "
                          f"than train.min_positives={config.train.min_positives}.")
        out.append(Fold(
            name=name, kind=kind,
            train=np.sort(np.concatenate([rows_of[i] for i in fit_times])),
            test=np.sort(np.concatenate([rows_of[i] for i in range(lo, hi)])),
            train_span=(_date(times[fit_times[0]]), _date(times[fit_times[-1]])),
            test_span=(_date(times[lo]), _date(times[hi - 1])),
        ))
    deploy = np.arange(len(values))
    return Folds(out, deploy, len(values), "time", purged // max(1, len(blocks)),
                 (_date(times[0]), _date(times[-1]))), ""


def ordered_folds(labels: np.ndarray, config: Config) -> Folds:
    """Forward-chaining folds in file order (rows in time order); no purge (no horizon)."""
    folds, problem = _ordered_folds(labels, config)
    if folds is not None:
        return folds
    raise InsufficientDataError(problem + _what_would_work(
        lambda cfg: _ordered_folds(labels, cfg)[0] is not None, config, event_mode=False))


def _row_span(rows: np.ndarray) -> tuple[str, str]:
    return (f"row {int(rows.min()) + 1}", f"row {int(rows.max()) + 1}") if len(rows) else ("", "")


def _ordered_folds(labels: np.ndarray, config: Config) -> tuple[Folds | None, str]:
    y = np.asarray(labels, dtype="int64")
    total = int(y.sum())
    n_outer, n_inner = config.train.outer_folds, config.train.inner_folds
    target = _fold_target(total, config)
    blocks = _blocks_from_end(y, n_inner + n_outer, target, None, math.ceil(config.train.fold_share * len(y)))
    if blocks is None or int(y[: blocks[0][0]].sum()) < config.train.min_positives:
        return None, (f"{len(y)} rows hold {total} converted leads: too few for {n_inner} inner and "
                      f"{n_outer} outer folds of at least {target} each and a first fit with "
                      f"train.min_positives={config.train.min_positives}.")
    out = []
    for k, (lo, hi) in enumerate(blocks):
        kind = "inner" if k < n_inner else "outer"
        train, test = np.arange(lo), np.arange(lo, hi)
        out.append(Fold(f"{kind} {k + 1 if kind == 'inner' else k - n_inner + 1}", kind, train, test,
                        _row_span(train), _row_span(test)))
    deploy = np.arange(len(y))
    return Folds(out, deploy, len(y), "ordered", 0, _row_span(deploy)), ""


def random_folds(labels: np.ndarray, config: Config) -> Folds:
    """Stratified, seeded blocks: inner folds fit on the other inner blocks (never an outer
    one); outer folds fit on every other block."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels, dtype="int64")
    n_outer, n_inner = config.train.outer_folds, config.train.inner_folds
    k = n_outer + n_inner
    total = int(y.sum())
    if total < k * config.train.min_positives or len(y) - total < k:
        hint = (" Set train.inner_folds: 2 and train.outer_folds: 1" if total >= 3 * config.train.min_positives
                else f" Lower train.min_positives (now {config.train.min_positives}) or add rows")
        raise InsufficientDataError(
            f"{len(y)} rows hold {total} converted leads: too few for {k} stratified folds of at least "
            f"train.min_positives={config.train.min_positives} conversions each.{hint}."
        )
    block = np.empty(len(y), dtype="int64")
    for b, (_, test) in enumerate(StratifiedKFold(k, shuffle=True, random_state=config.seed).split(y, y)):
        block[test] = b
    inner_blocks = np.flatnonzero(block < n_inner)
    out = []
    for b in range(k):
        kind = "inner" if b < n_inner else "outer"
        test = np.flatnonzero(block == b)
        train = inner_blocks[block[inner_blocks] != b] if kind == "inner" else np.flatnonzero(block != b)
        out.append(Fold(f"{kind} {b + 1 if kind == 'inner' else b - n_inner + 1}", kind, train, test,
                        (f"{len(train)} rows", ""), (f"{len(test)} rows", "")))
    return Folds(out, np.arange(len(y)), len(y), "random", 0, ("all rows", ""))


def _what_would_work(ok: Callable[[Config], bool], config: Config, event_mode: bool) -> str:
    """Name the first setting that would let this history train."""
    t = config.train
    tries: list[tuple[str, dict[str, Any]]] = []
    if t.inner_folds > 2:
        tries.append((f"train.inner_folds: 2 (now {t.inner_folds})", {"train__inner_folds": 2}))
    if t.outer_folds > 1:
        tries.append((f"train.outer_folds: 1 (now {t.outer_folds})", {"train__outer_folds": 1}))
    tries.append((f"train.fold_share: 0.05 (now {t.fold_share})", {"train__fold_share": 0.05}))
    for m in (t.min_positives // 2, t.min_positives // 5):
        if 5 <= m < t.min_positives:
            tries.append((f"train.min_positives: {m} (now {t.min_positives})", {"train__min_positives": m}))
    tries.append(("train.inner_folds: 2, train.outer_folds: 1, train.min_positives: 10",
                  {"train__inner_folds": 2, "train__outer_folds": 1, "train__min_positives": 10}))
    for text, overrides in tries:
        try:
            if ok(config.with_overrides(**overrides)):
                return f" Setting {text} would train on this history."
        except InsufficientDataError:
            continue
    more = (" a longer history, a shorter --horizon-days or more frequent snapshots (labels.frequency)"
            if event_mode else " more rows (or more converted ones)")
    return f" No fold setting fits this history: it needs{more}."


# --- fitting -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Settings chosen by one training run, to refit on another run's folds (promotion)."""

    params: dict[str, Any]
    rounds: int
    blend_weight: float
    calibration: str

    @classmethod
    def of(cls, model: LeadScoringModel) -> Recipe:
        meta = model.metadata
        method = (meta.calibration.method if meta.calibration else None) or model.calibrator_.method
        return cls(dict(meta.params or model.params), int(meta.rounds or model.best_iteration_),
                   float(meta.blend_weight or 0.0), str(method))


@dataclass
class CrossFit:
    """What :func:`cross_fit` returns: the deployed model, the choices and every fold's figures."""

    model: LeadScoringModel
    params: dict[str, Any]
    rounds: int
    blend_weight: float
    calibration_cv: dict[str, float]
    inner_log_loss: float
    tuning: pd.DataFrame | None
    #: out-of-fold probabilities of the outer rows, per source (``model`` and each baseline)
    outer_probs: dict[str, np.ndarray]
    outer_rows: np.ndarray
    fold_metrics: pd.DataFrame
    choices: dict[str, Any] = field(default_factory=dict)
    #: every fold's out-of-fold raw scores (inner, then outer) and their rows: the calibrator's data
    oof_raw: np.ndarray | None = None
    oof_rows: np.ndarray | None = None


def recency_weights(as_of: np.ndarray | None, rows: np.ndarray, half_life_days: float | None) -> np.ndarray | None:
    """Weights halving every *half_life_days* before the latest as-of time of *rows*."""
    if half_life_days is None or as_of is None:
        return None
    t = as_of[rows]
    age = (t.max() - t) / np.timedelta64(1, "D")
    return np.asarray(0.5 ** (age / half_life_days), dtype="float64")


def _dataset(X: np.ndarray, y: np.ndarray, spec: FeatureSpec, weight: np.ndarray | None,
             reference: lgb.Dataset | None = None) -> lgb.Dataset:
    ds = lgb.Dataset(X, label=np.asarray(y, dtype="float64"), weight=weight, feature_name=spec.names,
                     categorical_feature=spec.categorical or "auto", free_raw_data=True, reference=reference)
    if reference is None:
        ds.pandas_categorical = [list(spec.categories[n]) for n in spec.categorical]
    return ds


def _take(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of *X*: a view when they are consecutive (the usual case in time order)."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return X[rows[0]: rows[-1] + 1]
    return X[rows]


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def shifted_log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Log loss after shifting the log-odds so the mean prediction equals the base rate of *y*.

    The rounds are chosen by this, not the plain log loss: when the base rate drifts between
    folds, the plain log loss rewards stopping early (a weaker model is less wrong about the
    old rate), though the calibrator, fitted afterwards, corrects the level anyway.
    """
    z = np.log(np.clip(p, 1e-15, 1 - 1e-15)) - np.log1p(-np.clip(p, 1e-15, 1 - 1e-15))
    rate = float(np.mean(y))
    b = 0.0
    for _ in range(8):  # Newton steps on mean(sigmoid(z + b)) = rate
        q = 1.0 / (1.0 + np.exp(-(z + b)))
        grad = float(q.mean()) - rate
        hess = float((q * (1 - q)).mean())
        if hess <= 0 or abs(grad) < 1e-10:
            break
        b -= grad / hess
    return _logloss(y, 1.0 / (1.0 + np.exp(-(z + b))))


def _shifted_metric(preds: np.ndarray, data: lgb.Dataset) -> tuple[str, float, bool]:
    return "shifted_log_loss", shifted_log_loss(preds, np.asarray(data.get_label())), False


class Binned:
    """Every row binned once by LightGBM; a fold's rows are subsets sharing its bins (as
    ``lightgbm.cv`` does). Bins come from feature values only, never labels. With recency
    weights (relative to each fit's latest as-of time) every fit bins its own rows instead."""

    def __init__(self, X: np.ndarray, y: np.ndarray, spec: FeatureSpec, params: Mapping[str, Any],
                 weighted: bool) -> None:
        self.X, self.y, self.spec = X, y, spec
        self.full: lgb.Dataset | None = None
        if not weighted:
            self.full = lgb.Dataset(X, label=y, feature_name=spec.names, categorical_feature=spec.categorical or "auto",
                                    free_raw_data=False, params=dict(params))
            self.full.pandas_categorical = [list(spec.categories[n]) for n in spec.categorical]
            self.full.construct()

    def rows(self, rows: np.ndarray, weight: np.ndarray | None = None,
             reference: lgb.Dataset | None = None) -> lgb.Dataset:
        if self.full is None:
            return _dataset(_take(self.X, rows), self.y[rows], self.spec, weight, reference)
        if len(rows) == len(self.y):
            return self.full
        return self.full.subset(np.sort(rows).astype("int32"))  # type: ignore[arg-type]


def inner_rounds(
    X: np.ndarray, y: np.ndarray, folds: Sequence[Fold], lgb_params: Mapping[str, Any], spec: FeatureSpec,
    max_rounds: int, patience: int, weights: Callable[[np.ndarray], np.ndarray | None],
    fixed: int | None = None, binned: Binned | None = None,
) -> tuple[int, float, list[np.ndarray]]:
    """Boost every inner fold in lockstep; the round minimising the mean inner-fold log loss
    (level-shifted: :func:`shifted_log_loss`), that loss, and each fold's out-of-fold raw scores
    at that round (*fixed*: exactly that many
    rounds, as a recipe refitted elsewhere prescribes)."""
    boosters = []
    binned = binned or Binned(X, y, spec, lgb_params, weighted=True)
    for f in folds:
        train = binned.rows(f.train, weights(f.train))
        valid = binned.rows(f.test, None, reference=train)
        booster = lgb.Booster(dict(lgb_params), train)
        booster.add_valid(valid, "fold")
        boosters.append(booster)
    best, best_round = math.inf, 0
    for it in range(1, (fixed or max_rounds) + 1):
        losses = []
        for booster in boosters:
            booster.update()
            losses.append(booster.eval_valid(feval=_shifted_metric)[-1][2])
        mean = float(np.mean(losses))
        if fixed is not None:
            if it == fixed:
                best, best_round = mean, it
                break
            continue
        if mean < best - 1e-9:
            best, best_round = mean, it
        elif it - best_round >= patience:
            break
    oof = [np.asarray(b.predict(_take(X, f.test), num_iteration=best_round, raw_score=True), dtype="float64")
           for b, f in zip(boosters, folds, strict=True)]
    return best_round, best, oof


def _candidates(base: Mapping[str, Any], trials: int, seed: int) -> list[dict[str, Any]]:
    """Candidate 0 is the configured parameters; the others a seeded random search around them."""
    rng = np.random.default_rng(seed)
    out = [dict(base)]
    for _ in range(max(0, trials - 1)):
        params = dict(base)
        params.update(
            learning_rate=float(10 ** rng.uniform(-1.7, -1.0)),
            num_leaves=int(rng.integers(4, 64)),
            min_data_in_leaf=int(rng.integers(20, 400)),
            feature_fraction=float(rng.uniform(0.5, 1.0)),
            lambda_l2=float(10 ** rng.uniform(-1, 2)),
        )
        out.append(params)
    return out


def _figures(name: str, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    m = evaluate(y, p)
    return {f"{name}_{k}": m[k] for k in ("roc_auc", "log_loss", "brier", "ece")}


def _platt_log_loss(z: np.ndarray, y: np.ndarray) -> float:
    return _logloss(y, SigmoidCalibrator().fit(z, y).predict(z))


def cross_fit(
    frame: pd.DataFrame,
    y: np.ndarray,
    folds: Folds,
    config: Config,
    *,
    catalog: Any,
    event_types: Sequence[str] = (),
    baselines: Callable[[pd.DataFrame, np.ndarray], Mapping[str, Baseline]] | None = None,
    trials: int = 0,
    as_of: np.ndarray | None = None,
    recipe: Recipe | None = None,
) -> CrossFit:
    """Nested cross-fitting and the deployed refit (see the module doc).

    *frame* holds the catalog's feature columns for every row of *folds*; *baselines* fits the
    baselines on a fold's rows (they are compared on the outer folds); *as_of* (event mode)
    serves ``train.recency_half_life_days``. With *recipe*, nothing is chosen: its parameters,
    rounds, blend weight and calibration method are fitted on these folds (a champion's recipe
    judged on a challenger's outer folds).
    """
    tc = config.train
    y = np.asarray(y, dtype="float64")
    matrix = FeatureMatrix(frame, catalog)
    spec = matrix.spec(slice(None), event_types)
    matrix.encode(spec)
    X = matrix.values
    kinds = [spec.kinds[n] for n in spec.names]
    half_life = tc.recency_half_life_days

    def weights(rows: np.ndarray) -> np.ndarray | None:
        return recency_weights(as_of, rows, half_life)

    probe = LeadScoringModel(params=tc.lightgbm, monotone_constraints=tc.monotone_constraints, seed=config.seed)
    binned = Binned(X, y, spec, probe._lgb_params(spec), weighted=half_life is not None)
    inner = folds.inner
    y_inner = np.concatenate([y[f.test] for f in inner])

    # 1. parameters and rounds: mean inner-fold log loss, lockstep boosting
    table = []
    best: tuple[float, int, dict[str, Any], list[np.ndarray]] | None = None
    candidates = [dict(recipe.params)] if recipe else _candidates(tc.lightgbm, trials, config.seed)
    for i, params in enumerate(candidates):
        probe.params = params
        rounds, loss, oof = inner_rounds(X, y, inner, probe._lgb_params(spec), spec, tc.num_boost_round,
                                         tc.early_stopping_rounds, weights,
                                         fixed=recipe.rounds if recipe else None, binned=binned)
        if rounds < tc.min_boost_round and recipe is None:
            rounds, loss, oof = inner_rounds(X, y, inner, probe._lgb_params(spec), spec, tc.num_boost_round,
                                             tc.early_stopping_rounds, weights, fixed=tc.min_boost_round,
                                             binned=binned)
        table.append({"trial": i, **params, "rounds": rounds, "inner_log_loss": loss})
        if best is None or loss < best[0] - 1e-12:
            best = (loss, rounds, params, oof)
    assert best is not None
    inner_loss, rounds, params, tree_oof = best
    tree_inner = np.concatenate(tree_oof)

    # 2. blend weight with the logistic model, by inner out-of-fold log loss
    linear_inner = np.concatenate([
        LinearScorer(seed=config.seed).fit(_take(X, f.train), y[f.train], kinds, weights(f.train)).raw(_take(X, f.test))
        for f in inner
    ]) if (tc.blend and not tc.monotone_constraints if recipe is None else recipe.blend_weight > 0) else None
    blend_losses: dict[str, float] = {}
    weight = 0.0
    if recipe is not None:
        weight = recipe.blend_weight
    elif linear_inner is not None:
        for w in BLEND_GRID:
            blend_losses[f"{w:.1f}"] = _platt_log_loss((1 - w) * tree_inner + w * linear_inner, y_inner)
        weight = float(min(BLEND_GRID, key=lambda w: (blend_losses[f"{w:.1f}"], w)))
    z_inner = tree_inner if linear_inner is None else (1 - weight) * tree_inner + weight * linear_inner

    # 3. calibrator: method by cross-validated log loss on the inner out-of-fold scores
    calibrator, cv = select_calibrator(
        z_inner, y_inner, methods=(recipe.calibration,) if recipe else config.calibration.methods, cv_folds=config.calibration.cv_folds,
        min_rows_isotonic=config.calibration.min_rows_isotonic, seed=config.seed)

    # 4. outer folds: the chosen recipe, fitted on each fold's rows, scored through the inner calibrator
    def fit_recipe(rows: np.ndarray, fold_spec: FeatureSpec) -> LeadScoringModel:
        model = LeadScoringModel(params=params, num_boost_round=rounds, early_stopping_rounds=tc.early_stopping_rounds,
                                 monotone_constraints=tc.monotone_constraints, seed=config.seed,
                                 horizon_days=config.labels.horizon_days, grade_cutoffs=config.scoring.grade_cutoffs)
        model.fit_matrix(_take(X, rows), y[rows], spec=fold_spec, catalog=catalog, sample_weight=weights(rows),
                         dataset=binned.rows(rows, weights(rows)) if binned.full is not None else None)
        if weight > 0:
            model.blend(LinearScorer(seed=config.seed).fit(_take(X, rows), y[rows], kinds, weights(rows)), weight)
        return model

    outer_raw, outer_probs_parts, fold_rows = [], [], []
    base_probs: dict[str, list[np.ndarray]] = {}
    for f in folds.outer:
        model = fit_recipe(f.train, spec)
        raw = model.predict_raw_matrix(_take(X, f.test))
        outer_raw.append(raw)
        p = np.asarray(calibrator.predict(raw), dtype="float64")
        outer_probs_parts.append(p)
        row = {"fold": f.name, "kind": f.kind, "rows": len(f.test), "positives": int(y[f.test].sum()),
               **_figures("model", y[f.test], p)}
        if baselines is not None:
            fitted = baselines(frame.iloc[f.train], y[f.train].astype("int64"))
            X_test = frame.iloc[f.test]
            for name, b in fitted.items():
                q = np.asarray(b.predict_proba(X_test), dtype="float64")
                base_probs.setdefault(name, []).append(q)
                row.update(_figures(name, y[f.test], q))
        fold_rows.append(row)
    inner_rows = []
    start = 0
    for f in inner:
        z = z_inner[start: start + len(f.test)]
        start += len(f.test)
        inner_rows.append({"fold": f.name, "kind": f.kind, "rows": len(f.test), "positives": int(y[f.test].sum()),
                           **_figures("model", y[f.test], np.asarray(calibrator.predict(z), dtype="float64"))})
    fold_rows = inner_rows + fold_rows
    outer_rows = np.concatenate([f.test for f in folds.outer])
    outer_probs = {"model": np.concatenate(outer_probs_parts),
                   **{k: np.concatenate(v) for k, v in base_probs.items()}}

    # 5. the deployed model: every labelled row, the chosen settings, calibrated on all OOF scores
    if recipe is not None:  # judged only: no deployed refit
        model.calibrate(calibrator)
        return CrossFit(model=model, params=dict(params), rounds=rounds, blend_weight=weight, calibration_cv=cv,
                        inner_log_loss=inner_loss, tuning=None, outer_probs=outer_probs, outer_rows=outer_rows,
                        fold_metrics=pd.DataFrame(fold_rows), choices={})
    model = fit_recipe(folds.deploy, spec)
    all_raw = np.concatenate([z_inner, *outer_raw])
    all_y = np.concatenate([y_inner, y[outer_rows]])
    method = calibrator.method
    deployed_calibrator: Calibrator = select_calibrator(
        all_raw, all_y, methods=(method,), cv_folds=config.calibration.cv_folds,
        min_rows_isotonic=0, seed=config.seed)[0]
    model.calibrate(deployed_calibrator)
    choices = {"rounds": rounds, "blend_weight": weight, "calibration": method,
               "inner_log_loss": inner_loss, "blend_inner_log_loss": blend_losses,
               "tune_trials": trials}
    return CrossFit(model=model, params=dict(params), rounds=rounds, blend_weight=weight, calibration_cv=cv,
                    inner_log_loss=inner_loss, tuning=pd.DataFrame(table) if trials else None,
                    outer_probs=outer_probs, outer_rows=outer_rows, fold_metrics=pd.DataFrame(fold_rows),
                    choices=choices, oof_raw=all_raw,
                    oof_rows=np.concatenate([*(f.test for f in inner), outer_rows]))
