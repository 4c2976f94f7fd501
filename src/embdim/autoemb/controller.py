"""The controllers of AutoEmb (sec. 2.3, 3.2) and the weight sources of its baselines.

A controller maps a user's (or an item's) *current popularity* and *context* to a softmax over the
N candidate widths. The paper fixes the input size (38 for N = 3) but not the encoding; ours
(:func:`controller_features`, ``38 = 32 + 1 + N + 2`` for N = 3) is:

====================  =======  ===================================================================
part                  size     value
====================  =======  ===================================================================
popularity bucket     32       one-hot of ``min(floor(log2(1 + popularity)), 31)``
log popularity        1        ``log(1 + popularity) / 10``
last weights          N        the weights this user/item was given the last time it was scored
                               (``1/N`` each before its first interaction)
last loss             1        the loss it obtained that time (0 before)
has context           1        1 once it has been scored at least once, else 0
====================  =======  ===================================================================

Popularity is the number of the user's (item's) interactions the model has been trained on
before the current batch (:mod:`embdim.autoemb.loop`): the same count for a scored row and a
validation row, and for the Fig. 6/7 buckets. The context is kept in tensors indexed by id
(:class:`Context`), updated after each training batch is scored; a user seen twice in one batch
gets the mean of its weights and losses.

``inputs`` (``method.controller_inputs``) names the parts the controllers see: ``popularity``
(bucket one-hot and log popularity) and ``context`` (last weights, last loss, has context). A part
left out is fed as zeros, so the input width and the architecture stay the same (the popularity
ablation: ``[context]``).

Weight sources (``(ids [B], popularity [B]) -> weights [B, N]``):

* :class:`ControllerWeights` — AutoEmb and SAM: one controller for users, one for items;
* :class:`TableWeights` — the DARTS baseline: a trainable logit vector per user and per item,
  softmax over the N widths (no popularity input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

POPULARITY_BUCKETS = 32
INPUT_PARTS = ("popularity", "context")


def popularity_bucket(popularity: Tensor, buckets: int = POPULARITY_BUCKETS) -> Tensor:
    """``min(floor(log2(1 + p)), buckets - 1)``: 0 | 1-2 | 3-6 | 7-14 | ... (long ``[B]``)."""
    return torch.log2(popularity.double() + 1.0).floor().long().clamp(0, buckets - 1)


def feature_size(num_candidates: int) -> int:
    return POPULARITY_BUCKETS + 1 + num_candidates + 2


class Context:
    """Per-id context (last weights ``[num, N]``, last loss ``[num]``, seen flag ``[num]``)."""

    def __init__(self, num: int, num_candidates: int, device: torch.device | str = "cpu"):
        self.last_weights = torch.full((num, num_candidates), 1.0 / num_candidates, device=device)
        self.last_loss = torch.zeros(num, device=device)
        self.seen = torch.zeros(num, device=device)

    @torch.no_grad()
    def update(self, ids: Tensor, weights: Tensor, loss: Tensor) -> None:
        """Record the weights ``[B, N]`` and per-example loss ``[B]`` just obtained by ``ids``."""
        unique, inverse = torch.unique(ids, return_inverse=True)
        count = torch.bincount(inverse, minlength=len(unique)).float()
        w = torch.zeros(len(unique), weights.shape[1], device=ids.device)
        w.index_add_(0, inverse, weights.detach().float())
        lo = torch.zeros(len(unique), device=ids.device).index_add_(0, inverse, loss.detach().float())
        self.last_weights[unique] = w / count.unsqueeze(1)
        self.last_loss[unique] = lo / count
        self.seen[unique] = 1.0

    def state_dict(self) -> dict[str, Tensor]:
        return {"last_weights": self.last_weights, "last_loss": self.last_loss, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Copy a :meth:`state_dict` (same shapes) into this context."""
        for name, t in self.state_dict().items():
            if state[name].shape != t.shape:
                raise ValueError(f"context {name}: shape {tuple(state[name].shape)} in the "
                                 f"checkpoint, {tuple(t.shape)} here")
            t.copy_(state[name])


def controller_features(popularity: Tensor, ids: Tensor, context: Context,
                        inputs: Sequence[str] = INPUT_PARTS) -> Tensor:
    """The controller input ``[B, 32 + 1 + N + 2]`` (module docstring); the parts not in
    ``inputs`` are zeros."""
    bucket = nn.functional.one_hot(popularity_bucket(popularity), POPULARITY_BUCKETS).float()
    log_pop = torch.log1p(popularity.float()).unsqueeze(1) / 10.0
    pop = torch.cat([bucket, log_pop], dim=1)
    ctx = torch.cat([context.last_weights[ids], context.last_loss[ids].unsqueeze(1),
                     context.seen[ids].unsqueeze(1)], dim=1)
    if "popularity" not in inputs:
        pop = torch.zeros_like(pop)
    if "context" not in inputs:
        ctx = torch.zeros_like(ctx)
    return torch.cat([pop, ctx], dim=1)


class Controller(nn.Module):
    """``features [B, F] -> weights [B, N]``: fully connected tanh layers, then a softmax (Fig. 4)."""

    def __init__(self, num_candidates: int, hidden: Sequence[int] = (512, 512)):
        super().__init__()
        layers: list[nn.Module] = []
        width = feature_size(num_candidates)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        out = nn.Linear(width, num_candidates)
        nn.init.zeros_(out.weight)  # start from equal weights on every width
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return torch.softmax(self.net(features), dim=1)


class ControllerWeights(nn.Module):
    """AutoEmb / SAM: a user controller and an item controller, with their contexts."""

    def __init__(self, num_users: int, num_items: int, num_candidates: int,
                 hidden: Sequence[int] = (512, 512), *, inputs: Sequence[str] = INPUT_PARTS):
        super().__init__()
        bad = [x for x in inputs if x not in INPUT_PARTS]
        if bad:
            raise ValueError(f"controller inputs must be among {INPUT_PARTS}, got {list(inputs)}")
        self.inputs = tuple(inputs)
        self.user_controller = Controller(num_candidates, hidden)
        self.item_controller = Controller(num_candidates, hidden)
        self.user_context = Context(num_users, num_candidates)
        self.item_context = Context(num_items, num_candidates)

    def to(self, device):  # contexts are plain tensors, not buffers
        super().to(device)
        for ctx in (self.user_context, self.item_context):
            for name, t in ctx.state_dict().items():
                setattr(ctx, name, t.to(device))
        return self

    def forward(self, users: Tensor, items: Tensor, user_pop: Tensor,
                item_pop: Tensor) -> tuple[Tensor, Tensor]:
        alpha = self.user_controller(controller_features(user_pop, users, self.user_context,
                                                         self.inputs))
        beta = self.item_controller(controller_features(item_pop, items, self.item_context,
                                                        self.inputs))
        return alpha, beta

    def record(self, users: Tensor, items: Tensor, alpha: Tensor, beta: Tensor, loss: Tensor) -> None:
        self.user_context.update(users, alpha, loss)
        self.item_context.update(items, beta, loss)

    def context_state(self) -> dict[str, dict[str, Tensor]]:
        """The per-user/item contexts (plain tensors, so not in :meth:`state_dict`)."""
        return {"user": self.user_context.state_dict(), "item": self.item_context.state_dict()}

    def load_context_state(self, state: dict[str, dict[str, Tensor]]) -> None:
        self.user_context.load_state_dict(state["user"])
        self.item_context.load_state_dict(state["item"])


class TableWeights(nn.Module):
    """DARTS baseline: ``softmax(a_i)`` with a trainable ``a_i in R^N`` per user and per item."""

    def __init__(self, num_users: int, num_items: int, num_candidates: int):
        super().__init__()
        self.user_logits = nn.Parameter(torch.zeros(num_users, num_candidates))
        self.item_logits = nn.Parameter(torch.zeros(num_items, num_candidates))

    def forward(self, users: Tensor, items: Tensor, user_pop: Tensor,
                item_pop: Tensor) -> tuple[Tensor, Tensor]:
        return torch.softmax(self.user_logits[users], 1), torch.softmax(self.item_logits[items], 1)

    def record(self, users: Tensor, items: Tensor, alpha: Tensor, beta: Tensor, loss: Tensor) -> None:
        pass
