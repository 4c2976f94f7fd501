"""Synthetic CTR data with a planted truth, and Criteo / Avazu-format text files of any size.

Two uses:

* **Planted truth** (tests, the demo): :func:`make_synthetic_ctr` and :func:`write_synthetic_dataset`
  draw categorical fields whose label signal genuinely lives in a known number of dimensions
  (``true_dims``; 0 = a pure-noise field the label does not depend on at all), so that a dimension
  search can be checked against the right answer: noise fields must get the smallest dimension,
  high-dimensional (and more important) fields large ones.
* **Benchmark inputs**: :func:`write_criteo_tsv` and :func:`write_avazu_csv` stream files in the raw
  Kaggle formats at several hundred thousand lines per second with bounded memory, for the readers'
  tests and for preparation benchmarks. ``python -m embdim.data.synthetic criteo OUT N [SEED]``.

The planted model (``interaction="fm"``, the default)
------------------------------------------------------
Field ``i`` (``i = 1..F``) has cardinality ``c_i`` and true dimension ``k_i``. Its raw values
``0 .. c_i - 1`` are drawn i.i.d. with Zipf frequencies: the value of popularity rank ``r`` (0 = most
frequent) has probability ``(r + 1) ** -a_i / H`` (``a_i`` = ``zipf_exponent``), and ranks are mapped to
raw value indices by a fixed random permutation (raw index 0 is not the most frequent value). With
probability ``missing_rate_i`` a value is missing (raw index ``-1``) and contributes nothing.

Every informative field (``k_i > 0``) has, drawn once from ``spec.seed``:

* first-order weights ``w_i[v] ~ N(0, k_i)``;
* value vectors ``V_i[v] ~ N(0, I_{k_i})`` and a projection ``P_i`` [k_i, K] with entries
  ``~ N(0, 1/K)`` into a common space of dimension ``K = common_dim`` (default ``max k_i``). The
  planted embedding of value ``v`` is ``e_i[v] = P_i^T V_i[v]`` in R^K: it lies in a ``k_i``-dimensional
  subspace, so ``k_i`` dimensions are exactly what field ``i`` needs.

The noise-free planted logit of a row ``x`` and its label are::

    f(x) = b + alpha * sum_i w_i[x_i] + beta * sum_{i<j} <e_i[x_i], e_j[x_j]>
    y ~ Bernoulli(sigmoid(f(x) + eps)),   eps ~ N(0, noise_std**2)

where the sums run over informative, non-missing fields only. ``alpha`` and ``beta`` scale the
first-order and pairwise terms to standard deviations ``first_order_std`` and ``interaction_std``
(measured on a calibration sample), and the bias ``b`` is set so that the mean click probability is
``base_ctr``. Since ``Var <e_i, e_j>`` is about ``k_i k_j / K``, a field's share of the signal grows
with its true dimension. A noise field (``k_i = 0``) enters neither term: ``y`` is independent of it.

With ``interaction="mlp"`` the pairwise term is replaced by a small random MLP on the concatenated
value vectors, ``w2 . tanh(W1^T [V_1[x_1]; ...; V_F[x_F]] + b1)`` (``W1`` entries ``~ N(0, 1/sum k)``,
missing or noise fields contributing nothing), scaled the same way. Its random tanh units are
close to linear, so this variant is largely additive: easier to learn, and the true dims matter less
to a model's AUC than with ``"fm"``.

Raw values are drawn exactly from the discrete Zipf law above; the text-file writers use a faster
continuous approximation (:func:`_power_law_ranks`).

``P(y = 1 | x) = E_eps sigmoid(f(x) + eps)`` increases with ``f(x)``, so the planted logits are the
Bayes-optimal ranking: their AUC (``SyntheticTruth.bayes_auc``) is the best any model can reach.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embdim.data.dataset import PreparedDatasetWriter
from embdim.data.schema import (
    FIRST_VALUE_ID,
    MISSING_ID,
    OOV_ID,
    SPLITS,
    FieldSpec,
    Schema,
    frequency_summary,
)
from embdim.io import atomic_write_json
from embdim.train.metrics import logloss, roc_auc

__all__ = [
    "MISSING_RAW",
    "PlantedCTRModel",
    "SyntheticSpec",
    "SyntheticTruth",
    "default_demo_spec",
    "make_synthetic_ctr",
    "write_avazu_csv",
    "write_criteo_tsv",
    "write_synthetic_dataset",
]

MISSING_RAW = -1  # raw value index of a missing value in make_synthetic_ctr's ``x``
TRUTH_FILE = "truth.json"

# Random draws are made per block of this many rows, each (block, column) with its own generator
# (see _RowRandom): the output does not depend on the chunk size used to produce it, and the first n
# rows of a larger draw are the draw of n rows.
_BLOCK_ROWS = 1 << 16
_CALIBRATION_ROWS = 100_000  # rows that calibrate alpha, beta and the bias
_SHARE_ROWS = 20_000  # rows that estimate each field's variance share
_GAUSS_HERMITE_NODES = 24

Interaction = Literal["fm", "mlp"]


# ---------------------------------------------------------------------------------------------
# Spec and truth
# ---------------------------------------------------------------------------------------------

@dataclass
class SyntheticSpec:
    """What to plant (see the module docstring for the model). One entry per field in
    ``cardinalities`` / ``true_dims``; ``zipf_exponent`` and ``missing_rate`` are one value for every
    field or one per field. Logit scale: with the default stds (1, 2), no noise and several
    informative fields, the planted logits' AUC is typically 0.85-0.9.
    """

    cardinalities: list[int]
    true_dims: list[int]  # 0 = pure-noise field
    field_names: list[str] | None = None  # default f0, f1, ...
    zipf_exponent: float | list[float] = 1.1
    interaction: Interaction = "fm"
    common_dim: int | None = None  # K of the planted factorisation; default max(true_dims)
    first_order_std: float = 1.0  # std of alpha * sum_i w_i[x_i] in the logit
    interaction_std: float = 2.0  # std of the pairwise (fm) or MLP term in the logit
    noise_std: float = 0.0  # std of the Gaussian noise added to the logit before sampling y
    base_ctr: float = 0.25  # the bias is calibrated so that the mean click probability is this
    missing_rate: float | list[float] = 0.0
    mlp_hidden: int = 32  # hidden width of the planted MLP (interaction="mlp")
    seed: int = 0  # draws the planted parameters and the rows

    def __post_init__(self) -> None:
        self.cardinalities = [int(c) for c in self.cardinalities]
        self.true_dims = [int(k) for k in self.true_dims]
        n = len(self.cardinalities)
        if n == 0:
            raise ValueError("a synthetic spec needs at least one field")
        if len(self.true_dims) != n:
            raise ValueError(f"{len(self.true_dims)} true_dims for {n} cardinalities")
        if self.field_names is None:
            self.field_names = [f"f{i}" for i in range(n)]
        self.field_names = [str(s) for s in self.field_names]
        if len(self.field_names) != n or len(set(self.field_names)) != n:
            raise ValueError("field_names must be unique, one per field")
        for name, c, k in zip(self.field_names, self.cardinalities, self.true_dims, strict=True):
            if c < 1:
                raise ValueError(f"field {name!r}: cardinality {c} < 1")
            if not 0 <= k <= c:
                raise ValueError(f"field {name!r}: true dim {k} must be in 0..cardinality ({c})")
        if self.interaction not in ("fm", "mlp"):
            raise ValueError(f"interaction must be 'fm' or 'mlp', not {self.interaction!r}")
        if self.common_dim is not None and self.common_dim < max(1, *self.true_dims):
            raise ValueError(f"common_dim {self.common_dim} < largest true dim {max(self.true_dims)}")
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden {self.mlp_hidden} < 1")
        if not 0.0 < self.base_ctr < 1.0:
            raise ValueError(f"base_ctr {self.base_ctr} must be in (0, 1)")
        if min(self.first_order_std, self.interaction_std, self.noise_std) < 0:
            raise ValueError("first_order_std, interaction_std and noise_std must be >= 0")
        for a in self.zipf_exponents:
            if a < 0:
                raise ValueError(f"zipf exponent {a} < 0")
        for m in self.missing_rates:
            if not 0.0 <= m < 1.0:
                raise ValueError(f"missing rate {m} must be in [0, 1)")

    @property
    def num_fields(self) -> int:
        return len(self.cardinalities)

    @property
    def zipf_exponents(self) -> list[float]:
        return _per_field(self.zipf_exponent, self.num_fields, "zipf_exponent")

    @property
    def missing_rates(self) -> list[float]:
        return _per_field(self.missing_rate, self.num_fields, "missing_rate")

    @property
    def noise_fields(self) -> list[str]:
        assert self.field_names is not None
        return [n for n, k in zip(self.field_names, self.true_dims, strict=True) if k == 0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyntheticSpec:
        return cls(**d)


def _per_field(value: float | Sequence[float], n: int, name: str) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} fields")
    return values


def default_demo_spec(*, seed: int = 0, interaction: Interaction = "fm") -> SyntheticSpec:
    """The demo's planted dataset: 10 fields, two of them pure noise, true dims 2 .. 16.

    Cardinalities (10 .. 50,000) are deliberately not in the order of the true dims: a noise field
    has 50,000 values, a 2-dim field 10,000 and a 16-dim field only 1,000, so a method that sizes
    fields by vocabulary alone gets it wrong.

    Tuned so that the signal is learnable from the demo's data: with 200k rows (seed 0) the planted
    logits reach a test AUC of about 0.89, and a DeepFM (Adam, lr 1e-3, batch 2000, 3-4 epochs)
    about 0.80 with 16 dims per field, 0.76 with 2.
    """
    return SyntheticSpec(
        field_names=["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9"],
        cardinalities=[10, 50_000, 20, 10_000, 100, 1_000, 500, 200, 1_000, 5_000],
        true_dims=[0, 0, 2, 2, 4, 4, 8, 8, 16, 16],
        zipf_exponent=1.3,
        interaction=interaction,
        first_order_std=1.0,
        interaction_std=2.0,
        noise_std=0.0,
        base_ctr=0.25,
        seed=seed,
    )


@dataclass
class SyntheticTruth:
    """What was planted, and how well the planted (Bayes-optimal) predictor does. JSON-serialisable.

    ``variance_share[i]`` = Var(f(x) - f(x without field i)) / Var(f(x)) on a calibration sample:
    0 for a noise field; the shares can sum to more than 1 (a pairwise term counts for both fields).
    ``bayes_auc`` / ``bayes_logloss`` are those of the planted probabilities on ``bayes_on`` (``"all
    rows"`` for make_synthetic_ctr, ``"test split"`` for a written dataset).
    """

    field_names: list[str]
    cardinalities: list[int]
    true_dims: list[int]
    noise_fields: list[str]
    interaction: str
    common_dim: int
    bias: float
    first_order_scale: float  # alpha
    interaction_scale: float  # beta
    variance_share: list[float]
    n_rows: int
    ctr: float | None  # observed mean label of the generated rows
    bayes_auc: float | None  # None where undefined (no rows, or a single class)
    bayes_logloss: float | None
    bayes_on: str
    spec: dict[str, Any]
    dataset: dict[str, Any] = field(default_factory=dict)  # split seed, rows, vocab sizes (datasets)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyntheticTruth:
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> SyntheticTruth:
        return cls.from_dict(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------------------------------------
# Random streams
# ---------------------------------------------------------------------------------------------

class _RowRandom:
    """Random draws for the rows ``[start, start + n)`` of a stream, independent of chunking.

    The ``c``-th draw (one call = one value per row, e.g. one column) of fixed block ``b`` of
    ``_BLOCK_ROWS`` rows comes from its own generator seeded by ``(seed, stream, b, c)``, and the
    draw for rows ``[start, start + n)`` concatenates the blocks' draws. So the values of a row depend
    only on the seed, the stream and the row's index, not on how the rows are cut into chunks, and
    the first ``m`` rows of a draw of ``n >= m`` rows equal the draw of ``m`` rows (as long as every
    chunk makes the same sequence of calls).
    """

    def __init__(self, seed: int, stream: int, start: int, n: int):
        if start % _BLOCK_ROWS:
            raise ValueError(f"chunks must start at a multiple of {_BLOCK_ROWS} rows, not {start}")
        self._key = (int(seed), int(stream))
        first = start // _BLOCK_ROWS
        self._blocks = [(b, min(_BLOCK_ROWS, start + n - b * _BLOCK_ROWS))
                        for b in range(first, first + -(-n // _BLOCK_ROWS))]
        self._calls = 0

    def _draw(self, draw: Callable[[np.random.Generator, int], np.ndarray]) -> np.ndarray:
        c = self._calls
        self._calls += 1
        parts = [draw(np.random.default_rng([*self._key, b, c]), m) for b, m in self._blocks]
        return np.concatenate(parts) if parts else draw(np.random.default_rng(0), 0)

    def random(self) -> np.ndarray:
        """float64 [n] uniform in [0, 1)."""
        return self._draw(lambda g, m: g.random(m))

    def normal(self) -> np.ndarray:
        """float64 [n] standard normal."""
        return self._draw(lambda g, m: g.standard_normal(m))

    def integers(self, high: int) -> np.ndarray:
        """uint64 [n] uniform in ``0 .. high - 1``."""
        return self._draw(lambda g, m: g.integers(0, high, m, dtype=np.uint64))


def _chunk_starts(n_rows: int, chunk_rows: int) -> Iterator[tuple[int, int]]:
    """``(start, rows)`` of the chunks of ``n_rows`` rows, each a whole number of blocks long."""
    step = max(1, -(-chunk_rows // _BLOCK_ROWS)) * _BLOCK_ROWS
    for start in range(0, n_rows, step):
        yield start, min(step, n_rows - start)


# ---------------------------------------------------------------------------------------------
# The planted model
# ---------------------------------------------------------------------------------------------

class PlantedCTRModel:
    """The parameters drawn from a :class:`SyntheticSpec`; samples rows and computes planted logits.

    Building it draws every parameter from ``spec.seed`` and calibrates ``alpha``, ``beta`` and the
    bias (see the module docstring), so two models from equal specs are identical.
    """

    def __init__(self, spec: SyntheticSpec):
        self.spec = spec
        self.num_fields = spec.num_fields
        self.common_dim = spec.common_dim or max(max(spec.true_dims), 1)
        rng = np.random.default_rng([spec.seed, 0])
        K = self.common_dim
        self._rank_to_raw: list[np.ndarray] = []
        self._cdf: list[np.ndarray] = []
        self._w: list[np.ndarray | None] = []  # first-order weights [c_i]
        self._v: list[np.ndarray | None] = []  # value vectors V_i [c_i, k_i]
        self._e: list[np.ndarray | None] = []  # planted embeddings e_i = V_i P_i [c_i, K]
        for c, k, a in zip(spec.cardinalities, spec.true_dims, spec.zipf_exponents, strict=True):
            self._rank_to_raw.append(rng.permutation(c).astype(np.int32))
            cdf = np.cumsum(np.arange(1, c + 1, dtype=np.float64) ** -a)
            cdf /= cdf[-1]
            cdf[-1] = 1.0
            self._cdf.append(cdf)
            if k == 0:
                self._w.append(None)
                self._v.append(None)
                self._e.append(None)
                continue
            self._w.append(rng.standard_normal(c) * math.sqrt(k))
            v = rng.standard_normal((c, k))
            p = rng.standard_normal((k, K)) / math.sqrt(K)
            self._v.append(v)
            self._e.append(v @ p)
        total_k = sum(spec.true_dims)
        h = spec.mlp_hidden
        self._w1 = rng.standard_normal((max(total_k, 1), h)) / math.sqrt(max(total_k, 1))
        self._b1 = rng.standard_normal(h) * 0.5
        self._w2 = rng.standard_normal(h) / math.sqrt(h)
        self.first_order_scale = 1.0
        self.interaction_scale = 1.0
        self.bias = 0.0
        self.variance_share: list[float] = []  # see SyntheticTruth
        self._calibrate()

    # -- sampling ------------------------------------------------------------------------------

    def _sample_values(self, rnd: _RowRandom, n: int) -> np.ndarray:
        """Raw value indices int32 [n, F]: Zipf-distributed, ``MISSING_RAW`` where missing."""
        x = np.empty((n, self.num_fields), dtype=np.int32)
        for i, rate in enumerate(self.spec.missing_rates):
            rank = np.searchsorted(self._cdf[i], rnd.random(), side="right")
            x[:, i] = self._rank_to_raw[i][np.minimum(rank, len(self._cdf[i]) - 1)]
            if rate > 0:
                x[rnd.random() < rate, i] = MISSING_RAW
        return x

    def iter_chunks(self, n_rows: int, chunk_rows: int = 4 * _BLOCK_ROWS
                    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(x int32 [m, F], y float32 [m], logit float64 [m])`` chunks covering ``n_rows`` rows.

        ``logit`` is the noise-free planted logit ``f(x)``. The rows do not depend on ``chunk_rows``,
        and the first ``m`` rows of ``n >= m`` rows are the ``m`` rows.
        """
        for start, n in _chunk_starts(n_rows, chunk_rows):
            rnd = _RowRandom(self.spec.seed, 1, start, n)
            x = self._sample_values(rnd, n)
            logit = self.logits(x)
            noisy = logit + self.spec.noise_std * rnd.normal() if self.spec.noise_std else logit
            y = (rnd.random() < _sigmoid(noisy)).astype(np.float32)
            yield x, y, logit

    # -- the planted function ------------------------------------------------------------------

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Noise-free planted logits ``f(x)`` float64 [n] of raw rows ``x`` int [n, F]."""
        first, inter = self._raw_terms(np.asarray(x))
        return self.bias + self.first_order_scale * first + self.interaction_scale * inter

    def planted_embeddings(self, field: int) -> np.ndarray:
        """``e_i`` float64 [c_i, K]: every value's planted embedding (rank ``k_i``; zeros if noise)."""
        e = self._e[field]
        if e is None:
            return np.zeros((self.spec.cardinalities[field], self.common_dim))
        return e.copy()

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """``P(y=1 | x) = E_eps sigmoid(f(x) + eps)`` [n] from planted logits [n] (Gauss-Hermite)."""
        return _expected_sigmoid(np.asarray(logits, dtype=np.float64), self.spec.noise_std)

    def _raw_terms(self, x: np.ndarray, drop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Unscaled first-order sum [n] and pairwise / MLP term [n]; field ``drop`` left out."""
        n = x.shape[0]
        first = np.zeros(n)
        fm_sum = np.zeros((n, self.common_dim))
        fm_sq = np.zeros(n)
        mlp_in: list[np.ndarray] = []
        mlp = self.spec.interaction == "mlp"
        for i, k in enumerate(self.spec.true_dims):
            if k == 0:
                continue
            w, v, e = self._w[i], self._v[i], self._e[i]
            assert w is not None and v is not None and e is not None
            xi = x[:, i]
            present = xi >= 0 if i != drop else np.zeros(n, dtype=bool)  # dropped = all missing
            if present.all():
                first += w[xi]
                vi = v[xi] if mlp else None
                ei = None if mlp else e[xi]
            else:  # a missing value contributes nothing
                idx = np.where(present, xi, 0)
                first += np.where(present, w[idx], 0.0)
                vi = v[idx] * present[:, None] if mlp else None
                ei = None if mlp else e[idx] * present[:, None]
            if vi is not None:
                mlp_in.append(vi)
            if ei is not None:
                fm_sum += ei
                fm_sq += np.einsum("nk,nk->n", ei, ei)
        if mlp:
            if not mlp_in:
                return first, np.zeros(n)
            hidden = np.tanh(np.concatenate(mlp_in, axis=1) @ self._w1 + self._b1)
            return first, hidden @ self._w2
        return first, 0.5 * (np.einsum("nk,nk->n", fm_sum, fm_sum) - fm_sq)

    def _calibrate(self) -> None:
        """Set alpha, beta (term stds) and the bias (mean CTR) on a calibration sample."""
        x = self._sample_values(_RowRandom(self.spec.seed, 2, 0, _CALIBRATION_ROWS), _CALIBRATION_ROWS)
        first, inter = self._raw_terms(x)
        s1, s2 = first.std(), inter.std()
        self.first_order_scale = self.spec.first_order_std / s1 if s1 > 1e-12 else 0.0
        self.interaction_scale = self.spec.interaction_std / s2 if s2 > 1e-12 else 0.0
        g = self.first_order_scale * first + self.interaction_scale * inter
        self.bias = _solve_bias(g, self.spec.noise_std, self.spec.base_ctr)
        x = x[:_SHARE_ROWS]
        f = self.logits(x)
        var = f.var()
        shares = []
        for i in range(self.num_fields):
            if self.spec.true_dims[i] == 0 or var <= 0:
                shares.append(0.0)
                continue
            f1, f2 = self._raw_terms(x, drop=i)
            f_without = self.bias + self.first_order_scale * f1 + self.interaction_scale * f2
            shares.append(float((f - f_without).var() / var))
        self.variance_share = shares

    def truth(self, n_rows: int, y: np.ndarray, logits: np.ndarray, *, bayes_on: str,
              dataset: dict[str, Any] | None = None) -> SyntheticTruth:
        """A :class:`SyntheticTruth` with the Bayes AUC / Logloss of ``logits`` against ``y``."""
        spec = self.spec
        probs = self.probabilities(logits)
        return SyntheticTruth(
            field_names=list(spec.field_names or []), cardinalities=list(spec.cardinalities),
            true_dims=list(spec.true_dims), noise_fields=spec.noise_fields,
            interaction=spec.interaction, common_dim=self.common_dim, bias=float(self.bias),
            first_order_scale=float(self.first_order_scale),
            interaction_scale=float(self.interaction_scale),
            variance_share=[round(s, 6) for s in self.variance_share], n_rows=int(n_rows),
            ctr=_finite_or_none(np.mean(y) if len(y) else math.nan),
            bayes_auc=_finite_or_none(roc_auc(y, logits)),
            bayes_logloss=_finite_or_none(logloss(y, probs)), bayes_on=bayes_on,
            spec=spec.to_dict(), dataset=dict(dataset or {}))


def make_synthetic_ctr(spec: SyntheticSpec, n_rows: int
                       ) -> tuple[np.ndarray, np.ndarray, SyntheticTruth]:
    """Draw ``n_rows`` rows of the planted model.

    Returns ``x`` int32 [n, F] raw value indices ``0 .. card - 1`` (``MISSING_RAW`` = -1 where
    missing, only if the spec has a missing rate), ``y`` float32 [n] 0/1 labels, and the truth (with
    the Bayes AUC on these rows). Rows are drawn in blocks with bounded scratch memory; the first
    ``m`` rows of a draw of ``n >= m`` rows equal the draw of ``m`` rows. Use
    ``PlantedCTRModel(spec).logits(x)`` for the planted logits themselves.
    """
    if n_rows < 0:
        raise ValueError(f"n_rows {n_rows} < 0")
    model = PlantedCTRModel(spec)
    x = np.empty((n_rows, spec.num_fields), dtype=np.int32)
    y = np.empty(n_rows, dtype=np.float32)
    logits = np.empty(n_rows, dtype=np.float64)
    start = 0
    for xc, yc, lc in model.iter_chunks(n_rows):
        end = start + len(yc)
        x[start:end], y[start:end], logits[start:end] = xc, yc, lc
        start = end
    return x, y, model.truth(n_rows, y, logits, bayes_on="all rows")


# ---------------------------------------------------------------------------------------------
# A prepared dataset folder with the same id conventions as real preparation
# ---------------------------------------------------------------------------------------------

def write_synthetic_dataset(out_dir: str | os.PathLike, spec: SyntheticSpec, n_rows: int, *,
                            split_ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int | None = None,
                            min_count: int = 1, overwrite: bool = False,
                            chunk_rows: int = 1 << 18) -> tuple[Schema, SyntheticTruth]:
    """Draw ``n_rows`` planted rows and write them as a prepared dataset folder (plus ``truth.json``).

    The encoding is that of real preparation (see :mod:`embdim.data.schema`): a random
    train/valid/test split of exactly ``round(n * ratio)`` rows (seeded by ``seed``, default
    ``spec.seed``); per-field vocabularies from the training split, values seen fewer than
    ``min_count`` times there, and values never seen there, -> ``OOV_ID``; missing values ->
    ``MISSING_ID``; kept values -> ids from ``FIRST_VALUE_ID`` by descending training count (ties by raw
    value); ``frequencies.npy`` = training counts of every id. ``truth.bayes_auc`` is measured on the
    test split. Memory is bounded: rows are generated twice, chunk by chunk (count, then write).
    """
    if n_rows < 1:
        raise ValueError(f"n_rows {n_rows} < 1")
    if min_count < 1:
        raise ValueError(f"min_count {min_count} < 1")
    split_seed = spec.seed if seed is None else int(seed)
    sizes = _split_sizes(n_rows, split_ratios)
    split_of_row = _split_assignment(sizes, split_seed)
    model = PlantedCTRModel(spec)
    F = spec.num_fields

    # Pass 1: training counts of every raw value (and of missing values) per field.
    counts = [np.zeros(c, dtype=np.int64) for c in spec.cardinalities]
    missing = np.zeros(F, dtype=np.int64)
    start = 0
    for x, y, _ in model.iter_chunks(n_rows, chunk_rows):
        train = x[split_of_row[start:start + len(y)] == 0]
        start += len(y)
        for i in range(F):
            col = train[:, i]
            present = col[col >= 0]
            missing[i] += len(col) - len(present)
            counts[i] += np.bincount(present, minlength=spec.cardinalities[i])

    # Vocabularies: raw value -> id lookup tables, training frequency of every id.
    lookups, freqs, fields = [], [], []
    for i, name in enumerate(spec.field_names or []):
        kept = np.flatnonzero(counts[i] >= min_count)
        kept = kept[np.argsort(-counts[i][kept], kind="stable")]  # by count desc, ties by value
        lookup = np.full(spec.cardinalities[i], OOV_ID, dtype=np.int32)
        lookup[kept] = FIRST_VALUE_ID + np.arange(len(kept), dtype=np.int32)
        freq = np.empty(FIRST_VALUE_ID + len(kept), dtype=np.int64)
        freq[OOV_ID] = counts[i].sum() - counts[i][kept].sum()
        freq[MISSING_ID] = missing[i]
        freq[FIRST_VALUE_ID:] = counts[i][kept]
        lookups.append(lookup)
        freqs.append(freq)
        rare = int(np.count_nonzero((counts[i] > 0) & (counts[i] < min_count)))
        fields.append(FieldSpec(name=name, kind="categorical", vocab_size=len(freq),
                                frequency=frequency_summary(freq, rare, sizes["train"])))

    # Pass 2: encode and write, split by split in row order; keep the test logits for the truth.
    test_y, test_logits = [], []
    with PreparedDatasetWriter(out_dir, F, sizes, overwrite=overwrite) as writer:
        start = 0
        for x, y, logits in model.iter_chunks(n_rows, chunk_rows):
            which = split_of_row[start:start + len(y)]
            start += len(y)
            ids = np.empty_like(x)
            for i in range(F):
                col = x[:, i]
                ids[:, i] = np.where(col >= 0, lookups[i][np.maximum(col, 0)], MISSING_ID)
            for s, split in enumerate(SPLITS):
                rows = which == s
                if rows.any():
                    writer.write(split, ids[rows], y[rows])
            test_y.append(y[which == SPLITS.index("test")])
            test_logits.append(logits[which == SPLITS.index("test")])
        ty, tl = np.concatenate(test_y), np.concatenate(test_logits)
        options = {"format": "synthetic", "spec": spec.to_dict(), "seed": split_seed,
                   "min_count": min_count, "split": "random",
                   "split_ratios": [float(r) for r in split_ratios], "rows": n_rows}
        dataset_info = {"split_seed": split_seed, "splits": dict(sizes),
                        "min_count": min_count, "vocab_sizes": [f.vocab_size for f in fields]}
        truth = model.truth(n_rows, ty, tl, bayes_on="test split", dataset=dataset_info)
        # Written into the writer's temporary folder, so it is renamed into place with the rest.
        truth.save(writer.tmp_dir / TRUTH_FILE)
        schema = writer.finish(label="label", fields=fields, options=options,
                               frequencies=np.concatenate(freqs))
    return schema, truth


def _split_sizes(n_rows: int, ratios: Sequence[float]) -> dict[str, int]:
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (len(SPLITS),) or (r < 0).any() or r.sum() <= 0:
        raise ValueError(f"split_ratios must be {len(SPLITS)} non-negative numbers, got {ratios}")
    r = r / r.sum()
    valid, test = round(n_rows * r[1]), round(n_rows * r[2])
    return {"train": n_rows - valid - test, "valid": valid, "test": test}


def _split_assignment(sizes: dict[str, int], seed: int) -> np.ndarray:
    """int8 [n]: the split (index into ``SPLITS``) of every row, a seeded random permutation."""
    split_of_row = np.repeat(np.arange(len(SPLITS), dtype=np.int8), [sizes[s] for s in SPLITS])
    np.random.default_rng([seed, 7]).shuffle(split_of_row)
    return split_of_row


# ---------------------------------------------------------------------------------------------
# Helpers of the planted label model (its AUC / Logloss: embdim.train.metrics)
# ---------------------------------------------------------------------------------------------

def _finite_or_none(v: float) -> float | None:
    """``float(v)``, or None for NaN / inf (JSON has no NaN)."""
    return float(v) if math.isfinite(v) else None


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _expected_sigmoid(logits: np.ndarray, noise_std: float) -> np.ndarray:
    """``E sigmoid(logits + eps)``, ``eps ~ N(0, noise_std^2)``, by Gauss-Hermite quadrature."""
    if noise_std == 0:
        return _sigmoid(logits)
    nodes, weights = np.polynomial.hermite.hermgauss(_GAUSS_HERMITE_NODES)
    out = np.empty_like(logits)
    for s in range(0, len(logits), _BLOCK_ROWS):
        z = logits[s:s + _BLOCK_ROWS, None] + math.sqrt(2.0) * noise_std * nodes
        out[s:s + _BLOCK_ROWS] = _sigmoid(z) @ weights / math.sqrt(math.pi)
    return out


def _solve_bias(g: np.ndarray, noise_std: float, target: float) -> float:
    """The ``b`` with ``mean(E sigmoid(g + b + eps)) = target``: safeguarded Newton iterations.

    The mean is increasing in ``b``, with derivative ``mean(E sigmoid'(g + b + eps))``.
    """
    nodes, weights = np.polynomial.hermite.hermgauss(_GAUSS_HERMITE_NODES if noise_std else 1)
    if not noise_std:
        nodes, weights = np.zeros(1), np.full(1, math.sqrt(math.pi))
    shifts = math.sqrt(2.0) * noise_std * nodes
    weights = weights / math.sqrt(math.pi)
    lo, hi = -40.0 - g.max(), 40.0 - g.min()
    b = math.log(target / (1 - target)) - float(np.median(g))
    for _ in range(100):
        p = _sigmoid(g[:, None] + b + shifts)
        err = float((p @ weights).mean()) - target
        if abs(err) < 1e-12:
            break
        lo, hi = (b, hi) if err < 0 else (lo, b)
        slope = float(((p * (1 - p)) @ weights).mean())
        step = b - err / slope if slope > 0 else math.nan
        b = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo < 1e-12:
            break
    return b


# ---------------------------------------------------------------------------------------------
# Raw text files (Criteo TSV, Avazu CSV): vectorised, chunked, deterministic
# ---------------------------------------------------------------------------------------------

_HEX_PAIRS = np.array([int.from_bytes(f"{b:02x}".encode(), "little") for b in range(256)],
                      dtype=np.uint16)
CRITEO_INT_FIELDS = 13
CRITEO_CAT_FIELDS = 26
AVAZU_COLUMNS = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
                 "app_category,device_id,device_ip,device_model,device_type,device_conn_type,"
                 "C14,C15,C16,C17,C18,C19,C20,C21").split(",")
# The real Avazu training set's cardinalities of its hex-string columns.
AVAZU_DEFAULT_CARDINALITIES = {
    "site_id": 4737, "site_domain": 7745, "site_category": 26, "app_id": 8552, "app_domain": 559,
    "app_category": 36, "device_id": 2_686_408, "device_ip": 6_729_486, "device_model": 8251,
}


def _fmix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 that scrambles bits."""
    x = np.asarray(x, dtype=np.uint32).copy()
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    return x


def _value_hash(rank: np.ndarray, salt: int) -> np.ndarray:
    """uint32 [n]: a per-field injective hash of value ranks (distinct ranks, distinct hashes)."""
    return _fmix32(rank.astype(np.uint32) + np.uint32(salt))


def _value_effect(rank: np.ndarray, salt: int) -> np.ndarray:
    """float [n]: a fixed pseudo-random effect of each value, uniform with mean 0 and variance 1."""
    u = _fmix32(rank.astype(np.uint32) ^ np.uint32(salt)) * (1.0 / 2**32)
    return (u - 0.5) * math.sqrt(12.0)


def _validity(missing: np.ndarray | None):
    import pyarrow as pa

    return None if missing is None else pa.py_buffer(np.packbits(~missing, bitorder="little"))


def _hex8_column(h: np.ndarray, missing: np.ndarray | None = None):
    """An Arrow string array of the 8-hex-char strings of ``h`` uint32 [n] (null where ``missing``).

    Built without Python strings: each byte of ``h`` (big-endian) indexes a table of two-character
    pairs, and the [n, 4] uint16 result is the array's character data.
    """
    import pyarrow as pa

    n = len(h)
    data = _HEX_PAIRS[np.ascontiguousarray(h, dtype=">u4").view(np.uint8)]  # [n, 4] char pairs
    offsets = np.arange(0, 8 * n + 1, 8, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [_validity(missing), pa.py_buffer(offsets),
                                                  pa.py_buffer(np.ascontiguousarray(data))])


def _int_column(v: np.ndarray, missing: np.ndarray | None = None, dtype: str = "int64"):
    """An Arrow integer array of ``v`` [n] (null where ``missing``)."""
    import pyarrow as pa

    v = np.ascontiguousarray(v, dtype=np.dtype(dtype))
    return pa.Array.from_buffers(pa.from_numpy_dtype(v.dtype), len(v),
                                 [_validity(missing), pa.py_buffer(v)])


def _power_law_ranks(u: np.ndarray, card: int, a: float) -> np.ndarray:
    """Popularity ranks int64 [n] in ``0 .. card-1`` from uniforms ``u`` [n]: fast, Zipf-like.

    Inverts the CDF of the continuous power law ``x ** -a`` on ``[1, card + 1)`` and takes
    ``floor(x) - 1``, so ``P(rank r)`` is proportional to the integral of ``x ** -a`` over
    ``[r+1, r+2)`` (close to ``(r + 1) ** -a`` past the first few ranks), in O(1) per draw and with no
    table of size ``card``.
    """
    if abs(a - 1.0) < 1e-9:
        x = np.exp(u * math.log(card + 1.0))
    else:
        e = 1.0 - a
        x = (1.0 + u * ((card + 1.0) ** e - 1.0)) ** (1.0 / e)
    return np.minimum(x.astype(np.int64) - 1, card - 1)


def _write_text_chunks(path: str | os.PathLike, n_rows: int, chunk_rows: int,
                       make_chunk: Callable[[int, int], Any], *, delimiter: str, header: bool
                       ) -> Path:
    """Write ``make_chunk(start, n) -> pyarrow.Table`` chunks to ``path`` as CSV, atomically.

    Values are written unquoted (none contains a delimiter), nulls as empty fields.
    """
    import pyarrow.csv as pa_csv

    if n_rows < 0:
        raise ValueError(f"n_rows {n_rows} < 0")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    # Arrow quotes header names even with quoting_style="none": the header line is written here.
    options = pa_csv.WriteOptions(include_header=False, delimiter=delimiter, quoting_style="none")
    try:
        with open(tmp, "wb") as f:
            writer = None
            for start, n in _chunk_starts(max(n_rows, 1), chunk_rows):
                table = make_chunk(start, min(n, n_rows - start))
                if writer is None:
                    if header:
                        f.write((delimiter.join(table.column_names) + "\n").encode())
                    writer = pa_csv.CSVWriter(f, table.schema, write_options=options)
                writer.write_table(table)
            if writer is not None:
                writer.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_criteo_tsv(path: str | os.PathLike, n_rows: int, *, seed: int = 0,
                     chunk_rows: int = 1 << 18, cardinalities: Sequence[int] | None = None,
                     zipf_exponent: float = 1.1, world_seed: int = 0) -> Path:
    """Write ``n_rows`` lines in the Criteo Kaggle display-ads format (TSV, no header).

    Columns: ``label`` (0/1), ``I1..I13`` (non-negative heavy-tailed integers, each column empty at
    its own rate of 0-40 %), ``C1..C26`` (8-hex-char strings; about a third of the columns empty at
    5-45 %). ``C`` values follow a Zipf-like law (:func:`_power_law_ranks`) over ``cardinalities``
    (default log-spaced 10 .. 1e6). The label depends on every ``C`` column (strongly on C1, C4, ...)
    and a little on the integers; CTR is about 0.25.

    The vocabulary (hex string of each value), the value effects and the column parameters are fixed
    by ``world_seed``, the rows by ``seed``: files with different ``seed`` share their vocabulary,
    like days of the same log. Memory is bounded by ``chunk_rows`` (peak RSS about 330 MB at the
    default), and the content does not depend on it. About 500k lines/s on two CPU cores.
    """
    import pyarrow as pa

    cards = ([int(c) for c in cardinalities] if cardinalities is not None
             else np.round(np.geomspace(10, 1e6, CRITEO_CAT_FIELDS)).astype(int).tolist())
    if len(cards) != CRITEO_CAT_FIELDS or min(cards) < 1:
        raise ValueError(f"need {CRITEO_CAT_FIELDS} cardinalities >= 1, got {cards}")
    world = np.random.default_rng([world_seed, 11])
    int_mu, int_sigma = world.uniform(0, 4, CRITEO_INT_FIELDS), world.uniform(0.8, 2.0, CRITEO_INT_FIELDS)
    int_missing = world.uniform(0, 0.4, CRITEO_INT_FIELDS)
    cat_missing = np.where(world.random(CRITEO_CAT_FIELDS) < 0.35,
                           world.uniform(0.05, 0.45, CRITEO_CAT_FIELDS), 0.0)
    cat_effect = np.where(np.arange(CRITEO_CAT_FIELDS) % 3 == 0, 0.35, 0.1)
    salts = world.integers(0, 2**32, (CRITEO_CAT_FIELDS, 2)).astype(np.uint32)

    names = (["label"] + [f"I{j + 1}" for j in range(CRITEO_INT_FIELDS)]
             + [f"C{j + 1}" for j in range(CRITEO_CAT_FIELDS)])

    def make_chunk(start: int, n: int) -> pa.Table:
        rnd = _RowRandom(seed, 101, start, n)
        logit = np.full(n, -1.3)
        cols = []
        for j in range(CRITEO_INT_FIELDS):
            v = np.floor(np.exp(int_mu[j] + int_sigma[j] * rnd.normal()))
            logit += 0.08 * (np.log1p(v) - int_mu[j])
            cols.append(_int_column(v, rnd.random() < int_missing[j]))
        for j, card in enumerate(cards):
            rank = _power_law_ranks(rnd.random(), card, zipf_exponent)
            miss = rnd.random() < cat_missing[j] if cat_missing[j] > 0 else None
            effect = cat_effect[j] * _value_effect(rank, int(salts[j, 1]))
            logit += effect if miss is None else np.where(miss, 0.0, effect)
            cols.append(_hex8_column(_value_hash(rank, int(salts[j, 0])), miss))
        label = _int_column(rnd.random() < _sigmoid(logit), dtype="int8")
        return pa.Table.from_arrays([label, *cols], names=names)

    return _write_text_chunks(path, n_rows, chunk_rows, make_chunk, delimiter="\t", header=False)


def write_avazu_csv(path: str | os.PathLike, n_rows: int, *, seed: int = 0,
                    chunk_rows: int = 1 << 18, cardinalities: dict[str, int] | None = None,
                    zipf_exponent: float = 1.1, world_seed: int = 0) -> Path:
    """Write ``n_rows`` rows in the Avazu CTR format (CSV with header, ``AVAZU_COLUMNS``).

    ``id`` is a random unsigned 64-bit integer string, ``click`` 0/1 (CTR about 0.17), ``hour``
    ``YYMMDDHH`` from 14102100 to 14103023 in non-decreasing order over the file (time-ordered, like
    the real log), the site/app/device columns 8-hex-char strings with Zipf-like frequencies over
    ``cardinalities`` (default: the real data's, see ``AVAZU_DEFAULT_CARDINALITIES``), the integer
    columns (C1, banner_pos, device_type, device_conn_type, C14-C21) drawn from value sets like the
    real ones. No value is empty. ``seed`` / ``world_seed`` / ``chunk_rows`` as in
    :func:`write_criteo_tsv`.
    """
    import pyarrow as pa

    cards = dict(AVAZU_DEFAULT_CARDINALITIES)
    if cardinalities:
        unknown = set(cardinalities) - set(cards)
        if unknown:
            raise ValueError(f"unknown Avazu string columns {sorted(unknown)}; known: {sorted(cards)}")
        cards.update({k: int(v) for k, v in cardinalities.items()})
    world = np.random.default_rng([world_seed, 12])

    def value_set(n: int, low: int, high: int) -> np.ndarray:  # n distinct ints, in rank order
        return world.choice(np.arange(low, high), size=n, replace=False)

    int_values = {
        "C1": np.array([1005, 1002, 1010, 1012, 1007, 1001, 1008]),
        "banner_pos": np.array([0, 1, 7, 2, 4, 5, 3]),
        "device_type": np.array([1, 0, 4, 5, 2]),
        "device_conn_type": np.array([0, 2, 3, 5]),
        "C14": value_set(2626, 375, 24053),
        "C15": np.array([320, 300, 216, 728, 120, 1024, 480, 768]),
        "C16": np.array([50, 250, 36, 480, 90, 20, 320, 768, 1024]),
        "C17": value_set(435, 112, 2759),
        "C18": np.array([0, 3, 2, 1]),
        "C19": value_set(68, 33, 1960),
        "C20": np.r_[-1, 100000 + value_set(171, 0, 249)],
        "C21": value_set(60, 1, 220),
    }
    salts = {c: world.integers(0, 2**32, 2).astype(np.uint32) for c in AVAZU_COLUMNS}
    effects = {"site_id": 0.4, "app_id": 0.4, "site_category": 0.3, "device_model": 0.2,
               "banner_pos": 0.3, "C14": 0.3, "C17": 0.3, "C19": 0.2, "C21": 0.2, "device_ip": 0.15}
    n_hours = 10 * 24

    def make_chunk(start: int, n: int) -> pa.Table:
        rnd = _RowRandom(seed, 102, start, n)
        row = np.arange(start, start + n, dtype=np.int64)
        hour_index = row * n_hours // max(n_rows, 1)
        hour = 14102100 + (hour_index // 24) * 100 + hour_index % 24
        hour_of_day = hour_index % 24
        logit = -1.6 + 0.25 * np.cos(2 * np.pi * (hour_of_day - 14) / 24)
        cols = {"id": _int_column(rnd.integers(2**64 - 1), dtype="uint64"),
                "hour": _int_column(hour)}
        for c in AVAZU_COLUMNS[3:]:
            if c in int_values:
                vals = int_values[c]
                a = zipf_exponent if len(vals) > 20 else 2.0
                rank = _power_law_ranks(rnd.random(), len(vals), a)
                cols[c] = _int_column(vals[rank])
            else:
                rank = _power_law_ranks(rnd.random(), cards[c], zipf_exponent)
                cols[c] = _hex8_column(_value_hash(rank, int(salts[c][0])))
            if c in effects:
                logit += effects[c] * _value_effect(rank, int(salts[c][1]))
        cols["click"] = _int_column(rnd.random() < _sigmoid(logit), dtype="int8")
        return pa.Table.from_arrays([cols[c] for c in AVAZU_COLUMNS], names=list(AVAZU_COLUMNS))

    return _write_text_chunks(path, n_rows, chunk_rows, make_chunk, delimiter=",", header=True)


# ---------------------------------------------------------------------------------------------
# python -m embdim.data.synthetic
# ---------------------------------------------------------------------------------------------

_USAGE = """usage: python -m embdim.data.synthetic KIND OUT N [SEED]

  criteo OUT N [SEED]    Criteo Kaggle-format TSV with N lines
  avazu OUT N [SEED]     Avazu-format CSV with N rows (plus header)
  dataset OUT N [SEED]   a prepared dataset folder of the demo spec (SEED = split seed)"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (3, 4) or args[0] not in ("criteo", "avazu", "dataset"):
        print(_USAGE, file=sys.stderr)
        return 2
    kind, out, n = args[0], args[1], int(float(args[2]))
    seed = int(args[3]) if len(args) == 4 else 0
    t0 = time.perf_counter()
    if kind == "criteo":
        write_criteo_tsv(out, n, seed=seed)
    elif kind == "avazu":
        write_avazu_csv(out, n, seed=seed)
    else:
        _, truth = write_synthetic_dataset(out, default_demo_spec(), n, seed=seed)
        print(f"true dims {dict(zip(truth.field_names, truth.true_dims, strict=True))}, "
              f"Bayes test AUC {truth.bayes_auc:.4f}")
    secs = time.perf_counter() - t0
    print(f"wrote {out}: {n:,} rows in {secs:.2f} s ({n / max(secs, 1e-9):,.0f} rows/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
