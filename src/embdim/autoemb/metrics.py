"""Streaming metrics of AutoEmb's evaluation (sec. 3.3-3.6): per stage, per popularity bucket
(Fig. 6), the mean weight on each width per popularity bucket (Fig. 7) and the metric curve over
the stream (Fig. 8).

Every scored interaction adds its loss (MSE or cross-entropy) and correctness (accuracy) to sums
kept as tensors on the training device: one host synchronisation per curve point, none per batch.
Popularity buckets are ``floor(log2(1 + popularity))``: ``0``, ``1-2``, ``3-6``, ``7-14``, ...
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from embdim.autoemb.controller import POPULARITY_BUCKETS, popularity_bucket

STAGES = ("offline", "online")


def bucket_label(k: int) -> str:
    lo, hi = 2 ** k - 1, 2 ** (k + 1) - 2
    return str(lo) if lo == hi else f"{lo}-{hi}"


class StreamMetrics:
    """Sums of loss / correct / count per stage and per (stage, user or item popularity bucket),
    weight sums per bucket, and the running window of the curve."""

    def __init__(self, num_candidates: int, device: torch.device | str = "cpu"):
        k = POPULARITY_BUCKETS
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.stage = z(2, 3)  # [stage, (loss, correct, count)]
        self.user_buckets = z(2, k, 3)
        self.item_buckets = z(2, k, 3)
        self.user_weights = z(2, k, num_candidates)
        self.item_weights = z(2, k, num_candidates)
        self.window = z(3)
        self.curve: list[dict[str, Any]] = []
        self.num_candidates = num_candidates

    @torch.no_grad()
    def add(self, stage: int, loss: Tensor, correct: Tensor, user_pop: Tensor, item_pop: Tensor,
            alpha: Tensor | None, beta: Tensor | None) -> None:
        """One scored batch: per-example ``loss [B]``, ``correct [B]``, popularity ``[B]``, weights
        ``[B, N]`` (None for FSE)."""
        rows = torch.stack([loss.double(), correct.double(), torch.ones_like(loss, dtype=torch.float64)], 1)
        totals = rows.sum(0)
        self.stage[stage] += totals
        self.window += totals
        ub, ib = popularity_bucket(user_pop), popularity_bucket(item_pop)
        self.user_buckets[stage].index_add_(0, ub, rows)
        self.item_buckets[stage].index_add_(0, ib, rows)
        if alpha is not None and beta is not None:
            self.user_weights[stage].index_add_(0, ub, alpha.double())
            self.item_weights[stage].index_add_(0, ib, beta.double())

    def close_window(self, interactions: int, stage: int) -> None:
        """Append a curve point: the mean loss and accuracy since the previous point."""
        loss, correct, count = self.window.tolist()
        if count:
            self.curve.append({"interactions": interactions, "stage": STAGES[stage],
                               "loss": loss / count, "accuracy": correct / count})
        self.window.zero_()

    _TENSORS = ("stage", "user_buckets", "item_buckets", "user_weights", "item_weights", "window")

    def state_dict(self) -> dict[str, Any]:
        """Every sum and the curve so far (for checkpoints; plain tensors, lists and numbers)."""
        return {**{name: getattr(self, name).clone() for name in self._TENSORS},
                "curve": [dict(p) for p in self.curve]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self._TENSORS:
            t = getattr(self, name)
            if state[name].shape != t.shape:
                raise ValueError(f"metrics {name}: shape {tuple(state[name].shape)} in the "
                                 f"checkpoint, {tuple(t.shape)} here")
            t.copy_(state[name])
        self.curve = [dict(p) for p in state["curve"]]

    def summary(self, loss_name: str) -> dict[str, Any]:
        """Plain-JSON metrics: per stage, by popularity bucket, weights by bucket, the curve."""
        out: dict[str, Any] = {}
        for s, stage in enumerate(STAGES):
            loss, correct, count = self.stage[s].tolist()
            out[stage] = {loss_name: loss / count if count else None,
                          "accuracy": correct / count if count else None, "interactions": int(count)}
        for name, sums, weights in (("user", self.user_buckets, self.user_weights),
                                    ("item", self.item_buckets, self.item_weights)):
            for s, stage in enumerate(STAGES):
                rows = []
                for k in range(POPULARITY_BUCKETS):
                    loss, correct, count = sums[s, k].tolist()
                    if not count:
                        continue
                    row = {"bucket": bucket_label(k), "min_popularity": 2 ** k - 1,
                           "interactions": int(count), loss_name: loss / count,
                           "accuracy": correct / count}
                    w = weights[s, k]
                    if float(w.sum()) > 0:
                        row["weights"] = (w / count).tolist()
                    rows.append(row)
                out.setdefault("by_popularity", {}).setdefault(name, {})[stage] = rows
        out["curve"] = list(self.curve)
        return out
