"""The preliminary study of AutoEmb (sec. 1, Fig. 1): how the basic DLRS with one fixed embedding
width (2, 16, 128) fares as users become more popular.

The paper: "For each user, we first select a fixed part of his/her ratings as test and then we
choose x ratings as training", and plots MSE and accuracy against x for each width. Ours, on a
prepared stream:

* eligible users: those with at least ``test_per_user + max(xs)`` interactions (so every x uses the
  same users and the same test set);
* test: each eligible user's *last* ``test_per_user`` interactions (time order);
* for each x: the training set is each eligible user's *first* x interactions plus every
  interaction of the other (not eligible) users, which never appear in the test (so that item
  embeddings are trained alike for every x); a fresh
  :class:`embdim.autoemb.model.FixedWidthModel` per (x, width) — the plain DLRS of sec. 2.1, no
  transform — is trained for ``epochs`` shuffled passes (Adam,
  ``lr``, ``batch_size``) and scored on the test set.

Regression (binarised rating, MSE of the sigmoid) or classification (five classes,
cross-entropy), as in the streaming runs. :func:`popularity_study` returns the table;
``embdim stream study`` writes ``study.json``, ``study.md`` and ``study.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embdim.autoemb.model import FixedWidthModel, labels_for, per_example_loss
from embdim.autoemb.stream import InteractionStream
from embdim.errors import ConfigError, EmbdimError
from embdim.io import atomic_write_json, atomic_write_text

DEFAULT_XS = (1, 2, 5, 10, 20, 50, 100)


def _split(stream: InteractionStream, xs: Sequence[int], test_per_user: int):
    users = np.asarray(stream.arrays["users"])
    n = len(users)
    order = np.argsort(users, kind="stable")  # per user, its interactions in time order
    counts = np.bincount(users, minlength=stream.num_users)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, counts)
    need = test_per_user + max(xs)
    eligible = counts >= need
    if not eligible.any():
        raise EmbdimError(f"no user has {need} interactions (test_per_user {test_per_user} + "
                          f"largest x {max(xs)}); lower them")
    own = eligible[users]
    test = own & (rank >= counts[users] - test_per_user)
    others = ~own
    return rank, own, test, others, int(eligible.sum())


def popularity_study(stream: InteractionStream, *, widths: Sequence[int] = (2, 16, 128),
                     xs: Sequence[int] = DEFAULT_XS, test_per_user: int = 10,
                     task: str = "regression", epochs: int = 5, lr: float = 0.01,
                     batch_size: int = 500, hidden: Sequence[int] = (512, 512),
                     rating_threshold: float = 4.0, seed: int = 0) -> dict[str, Any]:
    """Train and score one model per (x, width) (module docstring); returns
    ``{"rows": [{x, width, loss, accuracy}], ...}`` with the settings."""
    xs = sorted({int(x) for x in xs})
    if not xs or xs[0] < 1 or test_per_user < 1 or epochs < 1 or not widths or min(widths) < 1:
        raise ConfigError("x values, test_per_user, epochs and widths must be positive")
    rank, own, test, others, n_users = _split(stream, xs, test_per_user)
    a = stream.arrays
    users = torch.from_numpy(np.array(a["users"], dtype=np.int64))
    items = torch.from_numpy(np.array(a["items"], dtype=np.int64))
    labels = labels_for(task, torch.from_numpy(np.array(a["ratings"], dtype=np.float32)),
                        rating_threshold)
    test_idx = torch.from_numpy(np.flatnonzero(test))
    background = others
    loss_name = "mse" if task == "regression" else "cross_entropy"
    rows = []
    for x in xs:
        train_idx = torch.from_numpy(np.flatnonzero((own & (rank < x)) | background))
        for width in widths:
            torch.manual_seed(seed)
            g = torch.Generator().manual_seed(seed)
            model = FixedWidthModel(stream.num_users, stream.num_items, int(width), hidden, task,
                                    transform=False)
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            model.train()
            for _ in range(epochs):
                perm = train_idx[torch.randperm(len(train_idx), generator=g)]
                for s in range(0, len(perm), batch_size):
                    b = perm[s:s + batch_size]
                    loss = per_example_loss(task, model(users[b], items[b]), labels[b])[0].mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            model.eval()
            with torch.no_grad():
                out = model(users[test_idx], items[test_idx])
                loss, correct = per_example_loss(task, out, labels[test_idx])
            rows.append({"x": x, "width": int(width), loss_name: float(loss.mean()),
                         "accuracy": float(correct.mean()), "train_interactions": len(train_idx)})
    return {"study": "AutoEmb Fig. 1", "task": task, "loss": loss_name, "users": n_users,
            "test_per_user": test_per_user, "test_interactions": len(test_idx), "epochs": epochs,
            "lr": lr, "batch_size": batch_size, "hidden": list(hidden), "seed": seed,
            "widths": [int(w) for w in widths], "xs": xs, "rows": rows}


def study_markdown(result: dict[str, Any]) -> str:
    key = result["loss"]
    widths = result["widths"]
    lines = [f"{result['users']:,} users with at least {result['test_per_user'] + max(result['xs'])} "
             f"interactions; test: their last {result['test_per_user']} "
             f"({result['test_interactions']:,}); task {result['task']}.", "",
             "| x (training interactions per user) | " + " | ".join(
                 f"{key} d={w} | acc d={w}" for w in widths) + " |",
             "|---" * (1 + 2 * len(widths)) + "|"]
    by = {(r["x"], r["width"]): r for r in result["rows"]}
    for x in result["xs"]:
        cells = [f"{by[x, w][key]:.4f} | {by[x, w]['accuracy']:.4f}" for w in widths]
        lines.append(f"| {x} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_study(result: dict[str, Any], out: str | Path, plots: bool = True) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "study.json", result)
    atomic_write_text(out / "study.md", "# Fixed widths by popularity (AutoEmb Fig. 1)\n\n"
                      + study_markdown(result))
    if plots:
        from embdim.plots import figure, save_figure

        fig = figure(11, 4.5)
        for col, (metric, label) in enumerate(((result["loss"], result["loss"]), ("accuracy", "accuracy"))):
            ax = fig.add_subplot(1, 2, col + 1)
            for w in result["widths"]:
                rows = [r for r in result["rows"] if r["width"] == w]
                ax.plot([r["x"] for r in rows], [r[metric] for r in rows], marker="o", label=f"d={w}")
            ax.set_xscale("log")
            ax.set_xlabel("popularity x (training interactions per user)", fontsize=8)
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"Fixed embedding widths by user popularity ({result['task']})")
        save_figure(fig, out / "study.png")
