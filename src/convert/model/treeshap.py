"""Exact path-dependent TreeSHAP for LightGBM models, several times faster than ``pred_contrib``.

:class:`TreeExplainerFast` returns the same numbers as
``booster.predict(X, pred_contrib=True)``: per-feature contributions to the raw (log-odds) score
with the expected value in the last column, to floating-point rounding (about 1e-15, asserted
to 1e-6 in ``tests/test_treeshap.py``). It reads the model once with ``booster.dump_model()``,
precomputes per-leaf tables, and explains rows in parallel with numba.

Why it is exact
---------------
Path-dependent TreeSHAP (Lundberg et al., 2020; LightGBM's ``Tree::TreeSHAP``) splits a tree's
output into one game per leaf. Let leaf ``l`` have value ``v`` and let ``F`` be the ``d``
distinct features on its root-to-leaf path (a feature split on several times along the path is
one player). For feature ``j`` in ``F`` let

* ``z_j`` (zero fraction) be the product over the path's nodes that split on ``j`` of
  ``count(child on the path) / count(node)`` (``leaf_count`` / ``internal_count``): the share of
  the training rows that would follow the path at those nodes;
* ``o_j`` (one fraction) be 1 if the explained row goes the path's way at *every* node that
  splits on ``j``, else 0.

The value of a coalition ``S`` is ``v * prod_{j in S} o_j * prod_{j in F \\ S} z_j`` and the
feature's SHAP value is the Shapley value of this game summed over leaves (features off the
path are dummies and get nothing; the empty coalitions sum to the expected value
``sum_l v_l * count_l / count_root``). Writing the Shapley weights as the Beta integral
``|S|! (d-|S|-1)! / d! = int_0^1 t^|S| (1-t)^(d-|S|-1) dt`` turns the sum over coalitions into

    phi_k = v * (o_k - z_k) * int_0^1 prod_{j in F, j != k} (o_j t + z_j (1 - t)) dt,

a polynomial of degree ``d - 1`` in ``t``, integrated exactly by Gauss-Legendre quadrature with
``ceil(d / 2)`` nodes. This is the same number TreeSHAP's EXTEND/UNWIND recursion computes, up
to rounding.

The only thing a row contributes is the *decision pattern*: the ``d`` bits ``o_j``. So for every
leaf with ``d <= max_table_bits`` the contributions of all ``2^d`` patterns are computed once
(they depend on the tree only) and explaining a row costs, per leaf, one pattern lookup and ``d``
additions: ``O(L * D)`` per row and tree against ``O(L * D^2)`` for TreeSHAP. Leaves beyond
the table limit or the memory budget (deep trees) evaluate the quadrature formula for a block
of rows at once: per node ``t_q``, the product of all ``d`` factors, then each ``phi_k`` with its
own factor divided out (the divisors ``t_q + z_k (1 - t_q)`` and ``1 - t_q`` are never zero),
``d * ceil(d / 2)`` vectorised multiply-adds per leaf and row. No tree shape is refused: a path
with more than 30 distinct features (more than the int32 pattern holds) is evaluated node by node.

Patterns come from the row's decision at every internal node, evaluated exactly as LightGBM
does (``Tree::NumericalDecision`` / ``Tree::CategoricalDecision``):

* input values with ``|x| <= 1e-35`` are read as 0.0 (LightGBM's dense-matrix reader drops them);
* numerical split, ``missing_type`` NaN: NaN goes the default direction, otherwise ``x <= threshold``;
* ``missing_type`` Zero: NaN counts as 0.0, and ``|x| <= 1e-35`` goes the default direction;
* ``missing_type`` None: NaN counts as 0.0 and is compared;
* categorical split (``decision_type == '=='``): NaN and negative codes go right; the integer
  part of the code goes left iff it is in the split's category set (unseen codes go right).

Nodes are stored in pre-order, so the pattern of every node below the root is its parent's
pattern with at most one bit added (the bit of the parent's feature, set when the row goes the
other way); a single forward pass over a tree's nodes yields the pattern of every leaf. Rows are
processed in blocks, each tree's tables stay in cache while a block runs through it, and the
blocks run in parallel (``prange``).

Limits: single-output models only (binary, regression; not multiclass), no ``linear_tree``, no
``average_output`` (random forest mode). The numba kernels compile on first use (10-25 s) and are
cached on disk next to this module (``cache=True``), so later processes start in about a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numba
import numpy as np
import pandas as pd
from numba import njit, prange

from convert.exceptions import UnsupportedModelError

__all__ = [
    "TreeExplainerFast",
    "UnsupportedModelError",
    "lightgbm_matrix",
]

# node kinds
_LEAF = 0
_NUM_NONE = 1
_NUM_ZERO = 2
_NUM_NAN = 3
_CAT = 4

_MISSING_KIND = {"None": _NUM_NONE, "Zero": _NUM_ZERO, "NaN": _NUM_NAN}

# LightGBM's kZeroThreshold is the float literal 1e-35f seen as a double.
_ZERO_THRESHOLD = float(np.float32(1e-35))
_INT_LIMIT = 2147483648.0  # static_cast<int> of anything at or above this is INT_MIN: goes right

_DEFAULT_BLOCK = 256
_MASK_BITS = 30  # pattern bits per leaf held in an int32; longer paths are evaluated node by node


# ---------------------------------------------------------------------------------------------
# numba kernels
# ---------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _goes_left(
    x: float,
    kind: int,
    thr: float,
    defleft: bool,
    cat_off: int,
    cat_len: int,
    cat_words: np.ndarray,
) -> bool:
    if kind == _CAT:
        if math.isnan(x) or x <= -1.0 or x >= _INT_LIMIT:
            return False
        c = int(x)
        w = c >> 5
        if w >= cat_len:
            return False
        return ((cat_words[cat_off + w] >> np.uint32(c & 31)) & np.uint32(1)) == 1
    if kind == _NUM_NAN:
        if math.isnan(x):
            return defleft
        return x <= thr
    if math.isnan(x):
        x = 0.0
    if kind == _NUM_ZERO and -_ZERO_THRESHOLD <= x <= _ZERO_THRESHOLD:
        return defleft
    return x <= thr


@njit(cache=True, inline="always")
def _leaf_phi(
    v: float,
    d: int,
    z: np.ndarray,
    o: np.ndarray,
    gl_t: np.ndarray,
    gl_a: np.ndarray,
    gl_off: int,
    pre: np.ndarray,
    phi: np.ndarray,
) -> None:
    """phi[k] = v (o_k - z_k) int_0^1 prod_{j != k} (o_j t + z_j (1-t)) dt, exactly (Gauss-Legendre)."""
    nq = (d + 1) // 2
    for k in range(d):
        phi[k] = 0.0
    for q in range(nq):
        t = gl_t[gl_off + q]
        a = gl_a[gl_off + q]
        s = 1.0 - t
        # prefix products pre[k] = prod_{j < k} f_j ; then sweep back with the suffix product
        acc = 1.0
        for k in range(d):
            pre[k] = acc
            acc *= o[k] * t + z[k] * s
        suf = a
        for k in range(d - 1, -1, -1):
            phi[k] += pre[k] * suf
            suf *= o[k] * t + z[k] * s
    for k in range(d):
        phi[k] *= v * (o[k] - z[k])


@njit(cache=True, parallel=True)
def _build_tables(
    leaf_value: np.ndarray,
    leaf_d: np.ndarray,
    leaf_pf: np.ndarray,
    leaf_tab: np.ndarray,
    path_z: np.ndarray,
    gl_t: np.ndarray,
    gl_a: np.ndarray,
    gl_off: np.ndarray,
    table: np.ndarray,
    max_d: int,
) -> None:
    n_leaves = leaf_value.shape[0]
    for leaf in prange(n_leaves):
        off = leaf_tab[leaf]
        d = leaf_d[leaf]
        if off < 0 or d == 0:
            continue
        z = path_z[leaf_pf[leaf] : leaf_pf[leaf] + d]
        o = np.empty(max_d + 1)
        pre = np.empty(max_d + 1)
        phi = np.empty(max_d + 1)
        n_pat = 1 << d
        for m in range(n_pat):
            for k in range(d):
                o[k] = 0.0 if (m >> k) & 1 else 1.0
            _leaf_phi(leaf_value[leaf], d, z, o, gl_t, gl_a, gl_off[d], pre, phi)
            for k in range(d):
                table[off + k * n_pat + m] = phi[k]


@njit(cache=True, parallel=True)
def _explain(
    X: np.ndarray,
    out: np.ndarray,
    expected: float,
    tree_start: np.ndarray,
    node_kind: np.ndarray,
    node_feat: np.ndarray,
    node_thr: np.ndarray,
    node_defleft: np.ndarray,
    node_left: np.ndarray,
    node_right: np.ndarray,
    node_bit: np.ndarray,
    node_cat_off: np.ndarray,
    node_cat_len: np.ndarray,
    node_leaf: np.ndarray,
    cat_words: np.ndarray,
    leaf_value: np.ndarray,
    leaf_d: np.ndarray,
    leaf_pf: np.ndarray,
    leaf_tab: np.ndarray,
    leaf_pn: np.ndarray,
    leaf_plen: np.ndarray,
    path_feat: np.ndarray,
    path_z: np.ndarray,
    path_node: np.ndarray,
    path_slot: np.ndarray,
    path_left: np.ndarray,
    table: np.ndarray,
    gl_t: np.ndarray,
    gl_a: np.ndarray,
    gl_off: np.ndarray,
    max_nodes: int,
    max_d: int,
    mask_bits: int,
    block: int,
) -> None:
    n, p = X.shape
    n_trees = tree_start.shape[0] - 1
    n_blocks = (n + block - 1) // block
    for bi in prange(n_blocks):
        r0 = bi * block
        nb = min(n, r0 + block) - r0
        xt = np.empty((p, nb))
        for b in range(nb):
            for f in range(p):
                x = X[r0 + b, f]
                # LightGBM's dense-matrix reader drops |x| <= kZeroThreshold: they become 0.0
                xt[f, b] = 0.0 if -_ZERO_THRESHOLD <= x <= _ZERO_THRESHOLD else x
        acc = np.zeros((p, nb))
        mask = np.zeros((max_nodes, nb), dtype=np.int32)
        o = np.empty(max_d + 1)
        z = np.empty(max_d + 1)
        pre = np.empty(max_d + 1)
        phi = np.empty(max_d + 1)
        fq = np.empty((max_d // 2 + 1, nb))
        for t in range(n_trees):
            s = tree_start[t]
            e = tree_start[t + 1]
            for b in range(nb):
                mask[0, b] = 0
            for ln in range(e - s):
                g = s + ln
                kind = node_kind[g]
                if kind != _LEAF:
                    f = node_feat[g]
                    lc = node_left[g]
                    rc = node_right[g]
                    bit = node_bit[g]
                    thr = node_thr[g]
                    dl = node_defleft[g] != 0
                    if kind == _NUM_NAN:
                        for b in range(nb):
                            x = xt[f, b]
                            m = mask[ln, b]
                            if math.isnan(x):
                                gl = dl
                            else:
                                gl = x <= thr
                            if gl:
                                mask[lc, b] = m
                                mask[rc, b] = m | bit
                            else:
                                mask[lc, b] = m | bit
                                mask[rc, b] = m
                    elif kind == _NUM_NONE:
                        for b in range(nb):
                            x = xt[f, b]
                            m = mask[ln, b]
                            if math.isnan(x):
                                x = 0.0
                            if x <= thr:
                                mask[lc, b] = m
                                mask[rc, b] = m | bit
                            else:
                                mask[lc, b] = m | bit
                                mask[rc, b] = m
                    else:
                        co = node_cat_off[g]
                        cl = node_cat_len[g]
                        for b in range(nb):
                            m = mask[ln, b]
                            if _goes_left(xt[f, b], kind, thr, dl, co, cl, cat_words):
                                mask[lc, b] = m
                                mask[rc, b] = m | bit
                            else:
                                mask[lc, b] = m | bit
                                mask[rc, b] = m
                    continue
                leaf = node_leaf[g]
                d = leaf_d[leaf]
                if d == 0:
                    continue
                pf = leaf_pf[leaf]
                off = leaf_tab[leaf]
                if off >= 0:
                    n_pat = 1 << d
                    for k in range(d):
                        f = path_feat[pf + k]
                        base = off + k * n_pat
                        for b in range(nb):
                            acc[f, b] += table[base + mask[ln, b]]
                    continue
                v = leaf_value[leaf]
                if d <= mask_bits:
                    # no table: integrate on the fly, vectorised over the block's rows.
                    # fq[q, b] = prod_k (o_k t_q + z_k (1 - t_q)); phi_k then divides its own
                    # factor out: v (1 - z_k) a_q / f1 when o_k = 1, -v a_q / (1 - t_q) when 0.
                    nq = (d + 1) // 2
                    go = gl_off[d]
                    for q in range(nq):
                        for b in range(nb):
                            fq[q, b] = 1.0
                    for k in range(d):
                        zk = path_z[pf + k]
                        for q in range(nq):
                            t = gl_t[go + q]
                            f0 = zk * (1.0 - t)
                            f1 = t + f0
                            for b in range(nb):
                                if (mask[ln, b] >> k) & 1:
                                    fq[q, b] *= f0
                                else:
                                    fq[q, b] *= f1
                    for k in range(d):
                        f = path_feat[pf + k]
                        zk = path_z[pf + k]
                        for q in range(nq):
                            t = gl_t[go + q]
                            a = gl_a[go + q]
                            c1 = v * (1.0 - zk) * a / (t + zk * (1.0 - t))
                            c0 = -v * a / (1.0 - t) if zk > 0.0 else 0.0
                            for b in range(nb):
                                if (mask[ln, b] >> k) & 1:
                                    acc[f, b] += fq[q, b] * c0
                                else:
                                    acc[f, b] += fq[q, b] * c1
                    continue
                # more distinct features than pattern bits: evaluate the path row by row
                pn = leaf_pn[leaf]
                plen = leaf_plen[leaf]
                for k in range(d):
                    z[k] = path_z[pf + k]
                for b in range(nb):
                    for k in range(d):
                        o[k] = 1.0
                    for j in range(plen):
                        nd = path_node[pn + j]
                        gl = _goes_left(
                            xt[node_feat[nd], b],
                            node_kind[nd],
                            node_thr[nd],
                            node_defleft[nd] != 0,
                            node_cat_off[nd],
                            node_cat_len[nd],
                            cat_words,
                        )
                        if gl != (path_left[pn + j] != 0):
                            o[path_slot[pn + j]] = 0.0
                    _leaf_phi(v, d, z, o, gl_t, gl_a, gl_off[d], pre, phi)
                    for k in range(d):
                        acc[path_feat[pf + k], b] += phi[k]
        for b in range(nb):
            for f in range(p):
                out[r0 + b, f] = acc[f, b]
            out[r0 + b, p] = expected


# ---------------------------------------------------------------------------------------------
# model parsing
# ---------------------------------------------------------------------------------------------


class _Flat:
    """Growable lists for the flat arrays, filled tree by tree."""

    def __init__(self) -> None:
        self.tree_start: list[int] = [0]
        self.kind: list[int] = []
        self.feat: list[int] = []
        self.thr: list[float] = []
        self.defleft: list[int] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self.slot: list[int] = []
        self.cat_off: list[int] = []
        self.cat_len: list[int] = []
        self.leaf_of_node: list[int] = []
        self.cat_words: list[int] = []
        self.leaf_value: list[float] = []
        self.leaf_d: list[int] = []
        self.leaf_pf: list[int] = []
        self.leaf_pn: list[int] = []
        self.leaf_plen: list[int] = []
        self.path_feat: list[int] = []
        self.path_z: list[float] = []
        self.path_node: list[int] = []
        self.path_slot: list[int] = []
        self.path_left: list[int] = []
        self.expected = 0.0
        self.max_nodes = 1
        self.max_d = 0


def _category_bitset(threshold: str) -> list[int]:
    cats = [int(c) for c in str(threshold).split("||") if c != ""]
    if not cats:
        return [0]
    words = [0] * (max(cats) // 32 + 1)
    for c in cats:
        if c >= 0:
            words[c >> 5] |= 1 << (c & 31)
    return words


def _add_tree(flat: _Flat, tree: dict[str, Any]) -> None:
    """Append one tree (``dump_model()['tree_info'][i]``) to the flat arrays, nodes in pre-order."""
    root = tree["tree_structure"]
    base = len(flat.kind)
    if "leaf_value" in root and "split_feature" not in root:
        # a single leaf: only the expected value
        flat.expected += float(root["leaf_value"])
        flat.tree_start.append(base)
        return
    total = float(root["internal_count"])
    # iterative pre-order walk; each stack entry: (node, parent local id, went left, path state)
    # path state: list of (feature, zero fraction, one-slot) per distinct feature + node list
    stack: list[
        tuple[dict[str, Any], int, bool, list[int], list[float], list[tuple[int, int, int]]]
    ]
    stack = [(root, -1, False, [], [], [])]
    leaf_counts: list[tuple[float, float]] = []
    while stack:
        node, parent, went_left, feats, zs, pnodes = stack.pop()
        local = len(flat.kind) - base
        if parent >= 0:
            if went_left:
                flat.left[base + parent] = local
            else:
                flat.right[base + parent] = local
        if "split_feature" not in node:
            # leaf
            leaf = len(flat.leaf_value)
            value = float(node["leaf_value"])
            leaf_counts.append((float(node.get("leaf_count", 0)), value))
            flat.kind.append(_LEAF)
            flat.feat.append(0)
            flat.thr.append(0.0)
            flat.defleft.append(0)
            flat.left.append(-1)
            flat.right.append(-1)
            flat.slot.append(-1)
            flat.cat_off.append(0)
            flat.cat_len.append(0)
            flat.leaf_of_node.append(leaf)
            flat.leaf_value.append(value)
            flat.leaf_d.append(len(feats))
            flat.leaf_pf.append(len(flat.path_feat))
            flat.path_feat.extend(feats)
            flat.path_z.extend(zs)
            flat.leaf_pn.append(len(flat.path_node))
            flat.leaf_plen.append(len(pnodes))
            for nd, slot, left in pnodes:
                flat.path_node.append(nd)
                flat.path_slot.append(slot)
                flat.path_left.append(left)
            flat.max_d = max(flat.max_d, len(feats))
            continue
        feature = int(node["split_feature"])
        if node.get("decision_type", "<=") == "==":
            kind = _CAT
            words = _category_bitset(node["threshold"])
            flat.cat_off.append(len(flat.cat_words))
            flat.cat_len.append(len(words))
            flat.cat_words.extend(words)
            thr = 0.0
        elif node.get("decision_type", "<=") == "<=":
            kind = _MISSING_KIND[str(node.get("missing_type", "None"))]
            flat.cat_off.append(0)
            flat.cat_len.append(0)
            thr = float(node["threshold"])
        else:
            raise UnsupportedModelError(
                f"unknown decision_type {node.get('decision_type')!r} in tree {tree.get('tree_index')}"
            )
        if feature in feats:
            slot = feats.index(feature)
        else:
            slot = len(feats)
        flat.kind.append(kind)
        flat.feat.append(feature)
        flat.thr.append(thr)
        flat.defleft.append(1 if node.get("default_left", False) else 0)
        flat.left.append(-1)
        flat.right.append(-1)
        flat.slot.append(slot)
        flat.leaf_of_node.append(-1)
        count = float(node["internal_count"])
        children = []
        for child_key, is_left in (("left_child", True), ("right_child", False)):
            child = node[child_key]
            child_count = float(
                child["internal_count"] if "split_feature" in child else child.get("leaf_count", 0)
            )
            frac = child_count / count if count > 0 else 0.0
            c_feats = list(feats)
            c_zs = list(zs)
            if slot < len(feats):
                c_zs[slot] *= frac
            else:
                c_feats.append(feature)
                c_zs.append(frac)
            c_pnodes = [*pnodes, (base + local, slot, 1 if is_left else 0)]
            children.append((child, local, is_left, c_feats, c_zs, c_pnodes))
        # push right first so the left subtree comes next in pre-order
        stack.append(children[1])
        stack.append(children[0])
    # LightGBM's Tree::ExpectedValue
    flat.expected += sum((cnt / total) * value for cnt, value in leaf_counts)
    flat.tree_start.append(len(flat.kind))
    flat.max_nodes = max(flat.max_nodes, len(flat.kind) - base)


def _gauss_legendre(max_d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1] with ceil(d/2) points for every d up to max_d."""
    offs = np.zeros(max_d + 1, dtype=np.int64)
    ts: list[float] = []
    ws: list[float] = []
    for d in range(1, max_d + 1):
        offs[d] = len(ts)
        x, w = np.polynomial.legendre.leggauss((d + 1) // 2)
        ts.extend(((x + 1.0) / 2.0).tolist())
        ws.extend((w / 2.0).tolist())
    if not ts:
        ts, ws = [0.5], [1.0]
    return np.asarray(ts, dtype=np.float64), np.asarray(ws, dtype=np.float64), offs


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


class TreeExplainerFast:
    """Exact path-dependent TreeSHAP for a LightGBM booster, equal to ``pred_contrib=True``.

    Parameters
    ----------
    booster:
        A trained ``lightgbm.Booster`` with one output (binary or regression).
    num_iteration:
        Trees to use, as in ``booster.predict``: ``None`` means the best iteration if there is
        one, else all; ``<= 0`` means all.
    max_table_bits:
        Leaves with at most this many distinct path features get a precomputed table of all
        ``2^d`` decision patterns; deeper leaves are integrated per row.
    max_table_mb:
        Memory budget for all tables together; leaves with few path features are served first.
    block_rows:
        Rows processed together by one thread.

    Attributes
    ----------
    expected_value_:
        The expected raw score (the last column of :meth:`contributions`).
    n_features_:
        Number of model features (``booster.num_feature()``).
    feature_names_:
        The model's feature names.
    """

    def __init__(
        self,
        booster: lgb.Booster,
        *,
        num_iteration: int | None = None,
        max_table_bits: int = 8,
        max_table_mb: float = 32.0,
        block_rows: int = _DEFAULT_BLOCK,
    ) -> None:
        dump = booster.dump_model(num_iteration=num_iteration)
        if int(dump.get("num_tree_per_iteration", 1)) != 1 or int(dump.get("num_class", 1)) > 1:
            raise UnsupportedModelError(
                "TreeExplainerFast explains single-output models (binary, regression); "
                f"this booster has {dump.get('num_tree_per_iteration')} trees per iteration"
            )
        if dump.get("average_output", False):
            raise UnsupportedModelError(
                "random-forest boosters (average_output) are not supported; use pred_contrib"
            )
        trees = dump["tree_info"]
        for tree in trees:
            if tree.get("is_linear") or _has_linear_leaf(tree["tree_structure"]):
                raise UnsupportedModelError(
                    "linear_tree models are not supported: their leaves are linear models, and "
                    "TreeSHAP is defined for constant leaves (LightGBM's pred_contrib refuses them "
                    "too); train with linear_tree=False to explain the model"
                )
        self.n_features_ = int(dump["max_feature_idx"]) + 1
        self.feature_names_: list[str] = list(dump.get("feature_names", []))
        self.pandas_categorical_: list[list[Any]] | None = dump.get("pandas_categorical")
        self.block_rows = int(block_rows)

        flat = _Flat()
        for tree in trees:
            _add_tree(flat, tree)
        self.expected_value_ = float(flat.expected)
        self.n_trees_ = len(trees)

        i32, f64 = np.int32, np.float64
        self._tree_start = np.asarray(flat.tree_start, dtype=np.int64)
        self._node_kind = np.asarray(flat.kind, dtype=np.int8)
        self._node_feat = np.asarray(flat.feat, dtype=i32)
        self._node_thr = np.asarray(flat.thr, dtype=f64)
        self._node_defleft = np.asarray(flat.defleft, dtype=np.uint8)
        self._node_left = np.asarray(flat.left, dtype=i32)
        self._node_right = np.asarray(flat.right, dtype=i32)
        self._node_cat_off = np.asarray(flat.cat_off, dtype=i32)
        self._node_cat_len = np.asarray(flat.cat_len, dtype=i32)
        self._node_leaf = np.asarray(flat.leaf_of_node, dtype=i32)
        self._cat_words = np.asarray(flat.cat_words or [0], dtype=np.uint32)
        self._leaf_value = np.asarray(flat.leaf_value, dtype=f64)
        self._leaf_d = np.asarray(flat.leaf_d, dtype=i32)
        self._leaf_pf = np.asarray(flat.leaf_pf, dtype=np.int64)
        self._leaf_pn = np.asarray(flat.leaf_pn, dtype=np.int64)
        self._leaf_plen = np.asarray(flat.leaf_plen, dtype=i32)
        self._path_feat = np.asarray(flat.path_feat or [0], dtype=i32)
        self._path_z = np.asarray(flat.path_z or [0.0], dtype=f64)
        self._path_node = np.asarray(flat.path_node or [0], dtype=i32)
        self._path_slot = np.asarray(flat.path_slot or [0], dtype=i32)
        self._path_left = np.asarray(flat.path_left or [0], dtype=np.uint8)
        self._max_nodes = int(flat.max_nodes)
        self._max_d = int(flat.max_d)
        self._gl_t, self._gl_a, self._gl_off = _gauss_legendre(max(self._max_d, 1))

        # tables: leaves with few distinct path features first, within the budget
        bits = max(0, min(int(max_table_bits), 20, _MASK_BITS))
        budget = int(max_table_mb * 2**20) // 8
        d = self._leaf_d.astype(np.int64)
        size = np.where(d <= bits, d << np.minimum(d, 62), -1)
        order = np.argsort(np.where(size >= 0, d, 10**6), kind="stable")
        leaf_tab = np.full(len(d), -1, dtype=np.int64)
        used = 0
        for leaf in order:
            sz = size[leaf]
            if sz < 0 or used + sz > budget:
                break
            if sz > 0:
                leaf_tab[leaf] = used
                used += sz
        self._leaf_tab = leaf_tab
        self._table = np.zeros(max(used, 1), dtype=f64)
        self.n_table_leaves_ = int(np.sum((leaf_tab >= 0) & (d > 0)))
        self.n_direct_leaves_ = int(np.sum((leaf_tab < 0) & (d > 0)))
        self.table_bytes_ = int(used * 8)

        # leaves beyond the pattern bits are evaluated node by node (needs > 30 distinct features)
        self._mask_bits = int(_MASK_BITS)
        self.n_path_leaves_ = int(np.sum(d > self._mask_bits))

        # a node's bit in the pattern (its feature's slot on the path); none past _MASK_BITS
        slot = np.asarray(flat.slot, dtype=np.int64)
        in_mask = (slot >= 0) & (slot < self._mask_bits)
        node_bit = np.where(in_mask, np.left_shift(1, np.clip(slot, 0, self._mask_bits - 1)), 0)
        self._node_bit = node_bit.astype(i32)

        if len(self._leaf_value):
            _build_tables(
                self._leaf_value,
                self._leaf_d,
                self._leaf_pf,
                self._leaf_tab,
                self._path_z,
                self._gl_t,
                self._gl_a,
                self._gl_off,
                self._table,
                max(self._max_d, 1),
            )

    # -----------------------------------------------------------------------------------------

    def contributions(
        self,
        X: np.ndarray | pd.DataFrame,
        *,
        n_threads: int | None = None,
        chunk_rows: int = 65536,
    ) -> np.ndarray:
        """Per-feature contributions to the raw score, shape ``(n, n_features + 1)``.

        Same layout as ``booster.predict(X, pred_contrib=True)``: the last column is
        :attr:`expected_value_`, and each row sums to the raw score.

        ``X`` is either a numeric matrix in the model's feature order, with categorical features
        as category codes (NaN or negative for missing), or a pandas frame, converted the way
        LightGBM converts it (see :func:`lightgbm_matrix`). ``n_threads`` caps numba's threads
        for this call. Frames are converted ``chunk_rows`` rows at a time.
        """
        n = len(X)
        p = self.n_features_
        out = np.empty((n, p + 1), dtype=np.float64)
        if n == 0:
            return out
        if isinstance(X, pd.DataFrame):
            if X.shape[1] != p:
                raise ValueError(f"X has {X.shape[1]} columns; the model has {p} features")
        else:
            X = np.asarray(X)
            if X.ndim != 2 or X.shape[1] != p:
                raise ValueError(f"X must be 2-D with {p} columns; got shape {X.shape}")
        previous = numba.get_num_threads()
        if n_threads is not None:
            limit = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
            numba.set_num_threads(max(1, min(int(n_threads), limit)))
        try:
            for start in range(0, n, chunk_rows):
                stop = min(n, start + chunk_rows)
                if isinstance(X, pd.DataFrame):
                    mat = lightgbm_matrix(X.iloc[start:stop], self.pandas_categorical_)
                else:
                    mat = np.ascontiguousarray(X[start:stop], dtype=np.float64)
                self._run(mat, out[start:stop])
        finally:
            numba.set_num_threads(previous)
        return out

    def _run(self, mat: np.ndarray, out: np.ndarray) -> None:
        _explain(
            mat,
            out,
            self.expected_value_,
            self._tree_start,
            self._node_kind,
            self._node_feat,
            self._node_thr,
            self._node_defleft,
            self._node_left,
            self._node_right,
            self._node_bit,
            self._node_cat_off,
            self._node_cat_len,
            self._node_leaf,
            self._cat_words,
            self._leaf_value,
            self._leaf_d,
            self._leaf_pf,
            self._leaf_tab,
            self._leaf_pn,
            self._leaf_plen,
            self._path_feat,
            self._path_z,
            self._path_node,
            self._path_slot,
            self._path_left,
            self._table,
            self._gl_t,
            self._gl_a,
            self._gl_off,
            self._max_nodes,
            max(self._max_d, 1),
            self._mask_bits,
            # the per-thread pattern scratch (nodes x rows int32) stays within about 4 MiB
            max(1, min(self.block_rows, (1 << 20) // self._max_nodes)),
        )


def _has_linear_leaf(node: dict[str, Any]) -> bool:
    stack = [node]
    while stack:
        cur = stack.pop()
        if "split_feature" in cur:
            stack.append(cur["left_child"])
            stack.append(cur["right_child"])
        elif "leaf_const" in cur or "leaf_coeff" in cur:
            return True
    return False


def lightgbm_matrix(
    frame: pd.DataFrame,
    pandas_categorical: Sequence[Sequence[Any]] | None = None,
) -> np.ndarray:
    """The float64 matrix LightGBM builds from a pandas frame at prediction time.

    Columns stay in order. The ``category`` columns are matched in order with the training
    category lists (``booster.pandas_categorical``); each is re-coded on its training list, so
    values unseen in training, and missing values, become NaN, and the others their code. Other
    columns are converted to float64 (nullable missing values to NaN). This is the value-for-value
    equivalent of ``lightgbm.basic._data_from_pandas``.
    """
    cat_cols = [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]
    if pandas_categorical is not None and len(cat_cols) != len(pandas_categorical):
        raise ValueError(
            f"the frame has {len(cat_cols)} category columns but the model was trained with "
            f"{len(pandas_categorical)}: train and predict categorical features do not match"
        )
    out = np.empty(frame.shape, dtype=np.float64)
    cat_index = 0
    for j in range(frame.shape[1]):
        series = frame.iloc[:, j]
        if isinstance(series.dtype, pd.CategoricalDtype):
            if pandas_categorical is not None:
                cats = list(pandas_categorical[cat_index])
                if list(series.cat.categories) != cats:
                    series = series.cat.set_categories(cats)
            cat_index += 1
            codes = series.cat.codes.to_numpy().astype(np.float64)
            codes[codes < 0] = np.nan
            out[:, j] = codes
        else:
            out[:, j] = series.to_numpy(dtype=np.float64, na_value=np.nan)
    return out
