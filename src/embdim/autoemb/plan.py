"""``plan.json`` of a streaming run: the learned rule that maps a user's (an item's) popularity to
its embedding width.

AutoEmb does not give a value a fixed width: a controller gives every interaction a soft mixture
of the candidate widths, from the popularity (and context) the user/item has at that moment. What
the run learned is therefore summarised per popularity bucket (``floor(log2(1 + popularity))``,
the buckets of ``metrics.json``): the mean weight on each candidate over the online stage, the
resulting expected width ``sum_n w_n d_n`` and the most-weighted width. This is the "rule that maps
a value's popularity to its dim" of DESIGN.md's ``plan.json``.

It is *not* a :class:`embdim.plan.DimensionPlan`, for three reasons (a DimensionPlan would have
to misstate one of them):

* the trained tables store **every** candidate for every user/item side by side
  (``d_1 + ... + d_N`` per row), so ``vocab_size x dim`` (DimensionPlan's ``embedding_params``)
  is wrong whichever single ``dim`` is recorded;
* a DimensionPlan is bound to a prepared CTR dataset (``schema_hash``, ``check_schema``) and is
  applied by ``build_model`` to a CTR base model, which would silently build uniform user/item
  tables, not AutoEmb's mixture;
* the width is a function of a quantity that changes over the stream (popularity), not of the id.

So the file has the same spirit and the same top-level keys where they mean the same thing
(``format_version``, ``method``, ``options``, ``embedding_params``, ``fde_embedding_params``,
``fields``, ``value_dim_rule``), ``kind: "stream"`` and ``stream_hash`` instead of
``schema_hash``; ``fields`` entries have no ``dim``, so ``DimensionPlan.load`` refuses the file.
:func:`load_stream_plan` reads it back and :func:`rule_width` applies the rule to a popularity.

``value_dim_rule`` (``kind: "popularity_buckets"``) has, for ``user`` and for ``item``, one row per
bucket seen in the online stage: ``bucket`` (label), ``min_popularity``, ``max_popularity`` (None
for the last, open bucket), ``interactions``, ``weights`` (mean weight per candidate),
``expected_width``, ``argmax_width``, ``entities_at_end`` (users/items whose popularity at the end
of the stream falls in the bucket). A popularity in a bucket without a row uses the nearest row
(the lower one on a tie). ``hard_embedding_params`` is the table size if every user/item kept only
the most-weighted width of its end-of-stream bucket. The FSE baseline has ``kind: "uniform"``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from embdim.autoemb.config import StreamConfig
from embdim.autoemb.controller import POPULARITY_BUCKETS, popularity_bucket
from embdim.errors import EmbdimError
from embdim.io import atomic_write_json

STREAM_PLAN_FORMAT = 1
STREAM_PLAN_KIND = "stream"


def _nearest_row(rows: list[dict[str, Any]], bucket: int) -> dict[str, Any]:
    """The rule row of ``bucket``, or of the nearest bucket that has one (lower on a tie)."""
    keyed = {_bucket_index(r): r for r in rows}
    return keyed[min(keyed, key=lambda k: (abs(k - bucket), k))]


def _bucket_index(row: dict[str, Any]) -> int:
    return (int(row["min_popularity"]) + 1).bit_length() - 1  # min_popularity = 2**k - 1


def stream_plan(cfg: StreamConfig, metrics: dict[str, Any], *, num_users: int, num_items: int,
                user_counts: torch.Tensor, item_counts: torch.Tensor) -> dict[str, Any]:
    """The plan of a finished run, from its ``metrics`` (online ``by_popularity`` rows) and the
    popularity counts at the end of the stream."""
    method = cfg.method.name
    sizes = {"user": num_users, "item": num_items}
    counts = {"user": user_counts, "item": item_counts}
    fde = (num_users + num_items) * cfg.fixed_width
    options = {"task": cfg.model.task, "hidden": list(cfg.model.hidden)}
    if method == "fse":
        rule: dict[str, Any] = {"kind": "uniform", "width": cfg.fixed_width}
        candidates = [cfg.fixed_width]
        hard = fde
        table_width = cfg.fixed_width
    else:
        candidates = [int(w) for w in cfg.model.widths]
        table_width = sum(candidates)
        options.update({k: v for k, v in asdict(cfg.method).items() if k != "name"})
        options["xi"] = cfg.xi  # the step actually used (0 for first order)
        rule = {"kind": "popularity_buckets", "stage": "online",
                "popularity": "interactions of the user (item) strictly before the current one",
                "bucket": f"min(floor(log2(1 + popularity)), {POPULARITY_BUCKETS - 1})",
                "outside": "a bucket without a row uses the nearest row (the lower one on a tie)",
                "conditioned_on_popularity": method in ("autoemb", "sam"),
                "candidates": candidates}
        hard = 0
        for name in ("user", "item"):
            at_end = torch.bincount(popularity_bucket(counts[name].cpu()),
                                    minlength=POPULARITY_BUCKETS).tolist()
            rows = []
            for r in metrics["by_popularity"][name]["online"]:
                if "weights" not in r:
                    continue
                k = _bucket_index(r)
                w = [float(x) for x in r["weights"]]
                rows.append({"bucket": r["bucket"], "min_popularity": int(r["min_popularity"]),
                             "max_popularity": 2 ** (k + 1) - 2 if k < POPULARITY_BUCKETS - 1 else None,
                             "interactions": int(r["interactions"]), "weights": w,
                             "expected_width": sum(wi * d for wi, d in zip(w, candidates, strict=True)),
                             "argmax_width": candidates[max(range(len(w)), key=w.__getitem__)],
                             "entities_at_end": int(at_end[k])})
            if not rows:
                raise EmbdimError(f"no online {name} weights in the metrics: cannot write plan.json")
            rule[name] = rows
            hard += sum(n * _nearest_row(rows, k)["argmax_width"] for k, n in enumerate(at_end) if n)
    fields = [{"name": name, "vocab_size": sizes[name], "table_width": table_width,
               "embedding_params": sizes[name] * table_width} for name in ("user", "item")]
    return {
        "format_version": STREAM_PLAN_FORMAT,
        "kind": STREAM_PLAN_KIND,
        "method": method,
        "options": options,
        "stream_hash": metrics.get("stream_hash"),
        "candidates": candidates,
        "aligned_dim": max(candidates),
        "fields": fields,
        "embedding_params": sum(f["embedding_params"] for f in fields),
        "fde_embedding_params": fde,
        "fde_width": cfg.fixed_width,
        "hard_embedding_params": hard,
        "value_dim_rule": rule,
    }


def write_stream_plan(path: str | Path, plan: dict[str, Any]) -> None:
    atomic_write_json(path, plan)


def load_stream_plan(path: str | Path) -> dict[str, Any]:
    """Read a streaming run's ``plan.json`` (plain JSON), refusing any other kind of file."""
    try:
        plan = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EmbdimError(f"{path}: plan file not found") from None
    except json.JSONDecodeError as e:
        raise EmbdimError(f"{path}: not valid JSON: {e}") from e
    kind = plan.get("kind") if isinstance(plan, dict) else None
    if kind != STREAM_PLAN_KIND:
        raise EmbdimError(f"{path}: not a streaming plan (kind {kind!r}); a CTR plan loads with "
                          "embdim.plan.DimensionPlan.load")
    if plan.get("format_version") != STREAM_PLAN_FORMAT:
        raise EmbdimError(f"{path}: unsupported streaming plan format_version "
                          f"{plan.get('format_version')!r}")
    return plan


def rule_width(plan: dict[str, Any], field: str, popularity: int, *, expected: bool = False) -> float:
    """The width the plan's rule gives a ``field`` (``user`` / ``item``) value of this popularity:
    the most-weighted candidate of its bucket, or with ``expected`` the expected width."""
    rule = plan["value_dim_rule"]
    if rule["kind"] == "uniform":
        return rule["width"]
    k = int(popularity_bucket(torch.tensor([popularity]))[0])
    row = _nearest_row(rule[field], k)
    return row["expected_width"] if expected else row["argmax_width"]
