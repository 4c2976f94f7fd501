"""``plan.json`` of a streaming run: the library's :class:`embdim.plan.DimensionPlan`, whose
``value_dim_rule`` is the learned rule that maps a user's (an item's) popularity to its width.

AutoEmb does not give a value a fixed width: a controller gives every interaction a soft mixture
of the candidate widths, from the popularity (and context) the user/item has at that moment. What
the run learned is therefore summarised per popularity bucket (``floor(log2(1 + popularity))``,
the buckets of ``metrics.json``): the mean weight on each candidate over the online stage, the
resulting expected width ``sum_n w_n d_n`` and the most-weighted width.

The plan's parts (docs/autoemb.md, "plan.json"):

* ``fields``: ``user`` and ``item``, their id counts as ``vocab_size``, ``dim`` the width the
  embedding hands to the DLRS (the largest candidate; FSE: ``model.fixed_width``);
* ``schema_hash``: the stream's content hash (``stream.json``), so a CTR dataset refuses the plan;
* ``full_dim``: FSE's width, so ``fde_embedding_params`` is the FSE baseline's table;
* ``embedding`` (AutoEmb, SAM, DARTS): ``{"kind": "autoemb_mixture", "candidates", "table_width",
  "embedding_params", "params_note"}``: the trained tables store **every** candidate side by side
  (``d_1 + ... + d_N`` per row), which is what ``embedding_params`` counts. No CTR base model
  builds this kind (``build_model`` refuses it by name); FSE has no entry (plain tables);
* ``value_dim_rule``: ``kind: "popularity_buckets"`` with, for ``user`` and ``item``, one row per
  bucket seen in the online stage (``bucket``, ``min_popularity``, ``max_popularity`` (None for the
  last, open bucket), ``interactions``, ``weights``, ``expected_width``, ``argmax_width``,
  ``entities_at_end``); FSE: ``{"kind": "uniform", "width": W}``. A popularity in a bucket
  without a row uses the nearest row (the lower one on a tie); :func:`rule_width` applies it;
* ``extra``: ``kind: "stream"`` and ``hard_embedding_params``, the table size if every user/item
  kept only the most-weighted width of its end-of-stream bucket.

Run folders written before the plan was a DimensionPlan hold the earlier streaming format
(``kind: "stream"`` at the top, ``stream_hash``, ``fields`` without ``dim``); :func:`load_stream_plan`
reads both.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from embdim.autoemb.config import StreamConfig
from embdim.autoemb.controller import POPULARITY_BUCKETS, popularity_bucket
from embdim.errors import EmbdimError
from embdim.plan import DimensionPlan, read_plan_json

STREAM_PLAN_KIND = "stream"  # extra["kind"] of a streaming plan
MIXTURE_KIND = "autoemb_mixture"  # embedding["kind"]: every candidate width stored side by side
LEGACY_FORMAT = 1  # the streaming plan.json before it was a DimensionPlan (read only)
PARAMS_NOTE = ("entries of the user and item tables, every candidate width stored side by side: "
               "(users + items) x (d_1 + ... + d_N)")


def _nearest_row(rows: list[dict[str, Any]], bucket: int) -> dict[str, Any]:
    """The rule row of ``bucket``, or of the nearest bucket that has one (lower on a tie)."""
    keyed = {_bucket_index(r): r for r in rows}
    return keyed[min(keyed, key=lambda k: (abs(k - bucket), k))]


def _bucket_index(row: dict[str, Any]) -> int:
    return (int(row["min_popularity"]) + 1).bit_length() - 1  # min_popularity = 2**k - 1


def stream_plan(cfg: StreamConfig, metrics: dict[str, Any], *, num_users: int, num_items: int,
                user_counts: torch.Tensor, item_counts: torch.Tensor) -> DimensionPlan:
    """The plan of a finished run, from its ``metrics`` (online ``by_popularity`` rows) and the
    popularity counts at the end of the stream."""
    method = cfg.method.name
    counts = {"user": user_counts, "item": item_counts}
    options: dict[str, Any] = {"task": cfg.model.task, "hidden": list(cfg.model.hidden)}
    embedding = None
    if method == "fse":
        rule: dict[str, Any] = {"kind": "uniform", "width": cfg.fixed_width}
        candidates = [cfg.fixed_width]
        hard = (num_users + num_items) * cfg.fixed_width
    else:
        candidates = [int(w) for w in cfg.model.widths]
        table_width = sum(candidates)
        options.update({k: v for k, v in asdict(cfg.method).items() if k != "name"})
        options["xi"] = cfg.xi  # the step actually used (0 for first order)
        embedding = {"kind": MIXTURE_KIND, "candidates": candidates, "table_width": table_width,
                     "embedding_params": (num_users + num_items) * table_width,
                     "params_note": PARAMS_NOTE}
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
    return DimensionPlan(method=method, field_names=["user", "item"],
                         vocab_sizes=[num_users, num_items], dims=[max(candidates)] * 2,
                         full_dim=cfg.fixed_width, schema_hash=str(metrics.get("stream_hash") or ""),
                         options=options, value_dim_rule=rule, embedding=embedding,
                         extra={"kind": STREAM_PLAN_KIND, "hard_embedding_params": hard})


def is_stream_plan(plan: DimensionPlan) -> bool:
    return plan.extra.get("kind") == STREAM_PLAN_KIND


def load_stream_plan(path: str | Path) -> DimensionPlan:
    """Read a streaming run's ``plan.json`` (this format, or the earlier streaming one of older run
    folders), refusing a plan that is not a streaming run's."""
    d = read_plan_json(path)
    if isinstance(d, dict) and d.get("kind") == STREAM_PLAN_KIND:
        if d.get("format_version") != LEGACY_FORMAT:
            raise EmbdimError(f"{path}: unsupported streaming plan format_version "
                              f"{d.get('format_version')!r}")
        d = from_legacy(d)
    try:
        plan = DimensionPlan.from_dict(d)
    except EmbdimError as e:
        raise EmbdimError(f"{path}: {e}") from None
    if not is_stream_plan(plan):
        raise EmbdimError(f"{path}: not a streaming plan (a CTR plan: per-field widths); load it "
                          "with embdim.plan.DimensionPlan.load")
    return plan


def from_legacy(d: dict[str, Any]) -> dict[str, Any]:
    """The DimensionPlan dict of a plan.json in the earlier streaming format (``kind: "stream"``,
    ``stream_hash``, ``candidates``, ``aligned_dim``, ``fde_width``, ``hard_embedding_params`` at the
    top; ``fields`` with ``table_width`` and no ``dim``)."""
    try:
        rule = d["value_dim_rule"]
        embedding = None
        if rule.get("kind") != "uniform":
            width = int(d["fields"][0]["table_width"])
            embedding = {"kind": MIXTURE_KIND, "candidates": list(d["candidates"]),
                         "table_width": width, "embedding_params": int(d["embedding_params"]),
                         "params_note": PARAMS_NOTE}
        return {"format_version": 1, "method": d["method"], "options": d.get("options") or {},
                "schema_hash": d.get("stream_hash") or "", "full_dim": d["fde_width"],
                "fields": [{"name": f["name"], "vocab_size": f["vocab_size"], "dim": d["aligned_dim"]}
                           for f in d["fields"]],
                "value_dim_rule": rule, "embedding": embedding,
                "extra": {"kind": STREAM_PLAN_KIND,
                          "hard_embedding_params": d["hard_embedding_params"]}}
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
        raise EmbdimError(f"malformed streaming plan: {e!r}") from None


def rule_width(plan: DimensionPlan, field: str, popularity: int, *, expected: bool = False) -> float:
    """The width the plan's rule gives a ``field`` (``user`` / ``item``) value of this popularity:
    the most-weighted candidate of its bucket, or with ``expected`` the expected width."""
    rule = plan.value_dim_rule or {}
    if rule.get("kind") == "uniform":
        return rule["width"]
    k = int(popularity_bucket(torch.tensor([popularity]))[0])
    row = _nearest_row(rule[field], k)
    return row["expected_width"] if expected else row["argmax_width"]
