"""Budget mode (``method.budget: kappa``): the exact knapsack over learned scores, and the plans of
AutoDim, RaS and MDE fitting ``kappa`` x the FDE embedding parameters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from embdim.config import config_from_dict
from embdim.data.dataset import PreparedDataset
from embdim.data.synthetic import SyntheticSpec, write_synthetic_dataset
from embdim.errors import ConfigError
from embdim.experiment import run_experiment
from embdim.nn.supernet import SupernetEmbedding
from embdim.search import SearchContext, make_method
from embdim.search.autodim import SearchResult, derive_plan, plan_under_budget
from embdim.search.budget import best_widths_under_budget, budget_params
from embdim.search.random import draw_under_budget
from embdim.train.trainer import seed_everything


def _brute_force(scores, widths, vocab, budget):
    best, best_dims = -np.inf, None
    for choice in itertools.product(*[range(len(w)) for w in widths]):
        dims = [w[k] for w, k in zip(widths, choice, strict=True)]
        if sum(v * d for v, d in zip(vocab, dims, strict=True)) <= budget:
            total = sum(s[k] for s, k in zip(scores, choice, strict=True))
            if total > best + 1e-12:
                best, best_dims = total, dims
    return best, best_dims


@pytest.mark.parametrize("seed", range(8))
def test_knapsack_is_exact_and_honours_the_budget(seed):
    rng = np.random.default_rng(seed)
    fields = 6
    widths = [sorted(rng.choice([1, 2, 4, 8, 16, 24, 32], size=rng.integers(2, 5), replace=False).tolist())
              for _ in range(fields)]
    vocab = rng.integers(5, 500, size=fields).tolist()
    scores = [np.log(rng.dirichlet(np.ones(len(w)))).tolist() for w in widths]
    kappa = float(rng.uniform(0.15, 0.7))
    budget = budget_params(vocab, 32, kappa)
    smallest = sum(v * min(w) for v, w in zip(vocab, widths, strict=True))
    if smallest > budget:
        with pytest.raises(ConfigError, match="below the smallest plan"):
            best_widths_under_budget(scores, widths, vocab, budget)
        return
    dims = best_widths_under_budget(scores, widths, vocab, budget)
    assert sum(v * d for v, d in zip(vocab, dims, strict=True)) <= budget
    best, _ = _brute_force(scores, widths, vocab, budget)
    got = sum(s[w.index(d)] for s, w, d in zip(scores, widths, dims, strict=True))
    assert got == pytest.approx(best, abs=1e-9)


def _searched(alpha_logits, candidates, vocab):
    net = SupernetEmbedding(vocab, candidates)
    with torch.no_grad():
        net.alpha_logits.copy_(torch.tensor(alpha_logits))
    return SearchResult(model=None, supernet=net, history=[], steps=1, alpha_updates=1, seconds=0.0)


class _Schema:
    def __init__(self, vocab):
        self.vocab_sizes, self.content_hash = vocab, ""
        self.field_names = [f"f{i}" for i in range(len(vocab))]


def test_autodim_budget_keeps_the_widths_alpha_prefers_most():
    vocab, cands = [100, 100, 1000], [2, 8, 16]
    # every field prefers 16; field 2 (10x the rows) only weakly
    logits = [[0.0, 0.0, 5.0], [0.0, 1.0, 4.0], [0.0, 0.0, 0.5]]
    result = _searched(logits, cands, vocab)
    assert derive_plan(result, _Schema(vocab), "autodim", {}).dims == [16, 16, 16]
    plan = derive_plan(result, _Schema(vocab), "autodim", {}, budget=0.25)
    # 4,800 entries: field 2 must take 2 (2,000); of fields 0 and 1 only one fits at 16, and
    # field 0 loses more than field 1 by going to 8 (alpha 5.0 vs 4.0 over 8's 0.0 / 1.0)
    assert plan.embedding_params <= 4800 and plan.dims == [16, 8, 2]
    assert plan.extra["budget"] == {"kappa": 0.25, "max_params": 4800, "argmax_dims": [16, 16, 16],
                                    "argmax_params": 19200}
    swapped = _searched([logits[1], logits[0], logits[2]], cands, vocab)
    assert derive_plan(swapped, _Schema(vocab), "autodim", {}, budget=0.25).dims == [8, 16, 2]


def test_a_saved_autodim_plan_is_re_derived_for_a_budget_as_the_search_would():
    vocab, cands = [100, 100, 1000], [2, 8, 16]
    result = _searched([[0.0, 0.0, 5.0], [0.0, 1.0, 4.0], [0.0, 0.0, 0.5]], cands, vocab)
    argmax = derive_plan(result, _Schema(vocab), "autodim", {})
    for kappa in (0.15, 0.25, 0.6):
        direct = derive_plan(result, _Schema(vocab), "autodim", {}, budget=kappa)
        again = plan_under_budget(argmax, kappa)
        assert again.dims == direct.dims and again.extra["budget"] == direct.extra["budget"]
        assert again.options["budget"] == kappa and argmax.dims == [16, 16, 16]


def test_vocab_cap_cuts_widths_at_the_vocabulary_and_the_budget_counts_the_cut_tables():
    """A 4-row table wider than 4 is cut to 4 (lossless behind the linear alignment); the entries
    it frees let the budget keep the other field at its preferred width."""
    vocab, cands = [4, 100], [2, 8, 16, 32]
    result = _searched([[0.0, 0.0, 0.0, 3.0], [0.0, 0.0, 1.0, 2.0]], cands, vocab)
    plain = derive_plan(result, _Schema(vocab), "autodim", {})
    capped = derive_plan(result, _Schema(vocab), "autodim", {}, vocab_cap=True)
    assert plain.dims == [32, 32] and capped.dims == [4, 32]
    assert capped.extra["searched_dims"] == [32, 32] and capped.extra["vocab_cap"] is True
    assert capped.embedding_params == 4 * 4 + 100 * 32
    # 0.97 x 3,328 = 3,228 entries: [32, 32] (3,328) does not fit, [4, 32] (3,216) does
    assert derive_plan(result, _Schema(vocab), "autodim", {}, budget=0.97).dims != [32, 32]
    within = derive_plan(result, _Schema(vocab), "autodim", {}, budget=0.97, vocab_cap=True)
    assert within.dims == [4, 32] and within.embedding_params <= 3228
    assert plan_under_budget(capped, 0.97).dims == [4, 32]  # the saved plan re-derives capped
    assert plan_under_budget(plain, 0.97).dims == derive_plan(
        result, _Schema(vocab), "autodim", {}, budget=0.97).dims


def test_vocab_cap_applies_only_where_it_loses_nothing():
    from embdim.search.autodim import AutoDimOptions

    assert not AutoDimOptions().caps_at_vocab  # the default: eq. 13 as written
    assert AutoDimOptions(vocab_cap=True).caps_at_vocab
    assert not AutoDimOptions(vocab_cap=True, unify="pad").caps_at_vocab  # padding: v is not d
    assert not AutoDimOptions(vocab_cap=True, inherit=True).caps_at_vocab  # copies the searched width


def test_random_search_draws_only_assignments_inside_the_budget():
    rng = np.random.default_rng(0)
    vocab, cands = [10, 200, 3000, 40, 5], [2, 8, 16, 24, 32]
    budget = budget_params(vocab, 32, 0.2)
    draws = [draw_under_budget(rng, cands, vocab, budget) for _ in range(200)]
    assert all(sum(v * d for v, d in zip(vocab, dims, strict=True)) <= budget for dims in draws)
    assert len({tuple(d) for d in draws}) > 20  # still random
    columns = list(zip(*draws, strict=True))
    assert set(columns[2]) == {2}  # 3,000 rows x 8 never fits
    assert all(len(set(col)) > 1 for k, col in enumerate(columns) if k != 2)  # the others vary


# ---- through the pipeline, on planted data ----------------------------------------------------
PLANTED = dict(cardinalities=[2000, 5000, 50, 50, 100, 100], true_dims=[0, 0, 2, 2, 16, 16],
               zipf_exponent=1.1, first_order_std=1.0, interaction_std=2.0)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "planted"
    write_synthetic_dataset(out, SyntheticSpec(**PLANTED, seed=1), 30_000, seed=1)
    return out


def _cfg(path, method: dict, **train):
    t = {"batch_size": 500, "lr": 2e-3, "epochs": 1, "seed": 1, "early_stop": 0, "threads": 1, **train}
    return config_from_dict({"data": {"path": str(path)}, "model": {"name": "deepfm", "mlp": [16]},
                             "method": method, "train": t})


@pytest.mark.parametrize("method", [{"name": "autodim", "alpha_lr": 0.03, "update_every": 2},
                                    {"name": "ras", "trials": 2},
                                    {"name": "mde", "temperatures": [0.2, 0.4]}])
def test_every_budget_method_writes_a_plan_inside_the_budget(planted, tmp_path, method):
    kappa = 0.25
    cfg = _cfg(planted, {**method, "budget": kappa})
    metrics = run_experiment(cfg, tmp_path / "run", quiet=True)
    schema = PreparedDataset(planted).schema
    fde_at_largest = sum(schema.vocab_sizes) * 32
    assert 0 < metrics["embedding_params"] <= kappa * fde_at_largest
    if method["name"] == "mde":  # each temperature uses the widest base that fits
        assert metrics["embedding_params"] > 0.5 * kappa * fde_at_largest


def test_autodim_budget_on_planted_data_narrows_the_noise_fields_first(planted):
    cfg = _cfg(planted, {"name": "autodim", "alpha_lr": 0.03, "update_every": 2, "budget": 0.1},
               epochs=3)
    seed_everything(1)
    ctx = SearchContext(model_options=cfg.model, train=cfg.train, quiet=True, log=lambda m: None)
    plan = make_method(cfg.method).search(PreparedDataset(planted), ctx)
    assert plan.embedding_params <= budget_params(plan.vocab_sizes, 32, 0.1)
    assert plan.dims[0] == plan.dims[1] == 2, plan.dims  # the pure-noise fields (7,000 rows)
    assert max(plan.dims[2:]) > 2, plan.dims  # the room left goes to the informative fields


def test_a_budget_below_the_narrowest_plan_is_refused_before_anything_is_written(planted, tmp_path):
    cfg = _cfg(planted, {"name": "autodim", "budget": 0.05})  # narrowest: 2 of 32 = 0.0625
    with pytest.raises(ConfigError, match=r"kappa >= 0\.0625"):
        run_experiment(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="method.budget must be a fraction"):
        _cfg(planted, {"name": "ras", "budget": 1.5})
