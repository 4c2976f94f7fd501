"""AutoDim: the supernet, the bilevel search on planted data, the DARTS step, derive and retrain."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from embdim.config import config_from_dict
from embdim.data.dataset import PreparedDataset
from embdim.data.synthetic import SyntheticSpec, write_synthetic_dataset
from embdim.errors import ConfigError
from embdim.experiment import run_experiment
from embdim.nn.models import build_model
from embdim.nn.supernet import SupernetEmbedding
from embdim.plan import DimensionPlan
from embdim.search import SearchContext, make_method
from embdim.search.autodim import AutoDimSearch
from embdim.search.bilevel import batch_loss, second_order_alpha_grad, w_step
from embdim.train.trainer import seed_everything

# Two high-cardinality pure-noise fields (they can only overfit), two 2-dim and two 16-dim fields.
PLANTED = dict(cardinalities=[2000, 5000, 50, 50, 100, 100], true_dims=[0, 0, 2, 2, 16, 16],
               zipf_exponent=1.1, first_order_std=1.0, interaction_std=2.0)
# Short search budget: alpha needs a larger step than the paper's 1e-3 to move in ~150 updates.
FAST_SEARCH = {"alpha_lr": 0.03, "update_every": 2}


def _cfg(path, method: dict, model: str = "deepfm", **train):
    t = {"batch_size": 500, "lr": 2e-3, "epochs": 3, "seed": 1, "early_stop": 0, "threads": 1, **train}
    return config_from_dict({"data": {"path": str(path)}, "model": {"name": model, "mlp": [32]},
                             "method": method, "train": t})


def _ctx(cfg):
    return SearchContext(model_options=cfg.model, train=cfg.train, quiet=True, log=lambda m: None)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    paths = {}
    for seed in (1, 2):
        out = tmp_path_factory.mktemp("data") / f"planted{seed}"
        write_synthetic_dataset(out, SyntheticSpec(**PLANTED, seed=seed), 100_000, seed=seed)
        paths[seed] = out
    return paths


# ---- the supernet ------------------------------------------------------------------------------
@pytest.mark.parametrize("lookup", ["shared", "separate"])
@pytest.mark.parametrize("unify", ["linear", "pad"])
def test_supernet_mixes_unified_candidates_under_every_body(lookup, unify):
    torch.manual_seed(0)
    net = SupernetEmbedding([5, 7, 3], [2, 8, 16], lookup=lookup, unify=unify)
    ids = torch.randint(0, 3, (64, 3), dtype=torch.int32)
    out = net(ids)
    assert out.shape == (64, 3, 16) and torch.isfinite(out).all()
    cands = net.candidate_embeddings(ids)
    assert len(cands) == 3 and all(c.shape == (64, 3, 16) for c in cands)
    if unify == "pad":  # the 2-wide candidate is zero beyond its width
        assert torch.all(cands[0][..., 2:] == 0)
    expected_tables = (5 + 7 + 3) * (16 if lookup == "shared" else 2 + 8 + 16)
    assert net.embedding_params == expected_tables
    for model in ("fm", "widedeep", "deepfm", "nfm", "ipnn", "autoint"):
        m = build_model(model, [5, 7, 3], embedding=SupernetEmbedding([5, 7, 3], [2, 8, 16], lookup=lookup,
                                                                      unify=unify))
        assert m(ids).shape == (64,)


def _reference_supernet(net: SupernetEmbedding, ids: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Eq. 1-4 and 7 written out one candidate at a time (training mode: batch statistics)."""
    rows = ids.long() + net.offsets
    out = 0.0
    for n, d in enumerate(net.widths):
        x = net.table.weight[rows][..., :d] if net.lookup == "shared" else net.tables[n].weight[rows]
        if net.unify == "linear":
            x = torch.einsum("bfd,fde->bfe", x, net.weights[n]) + net.biases[n]
        x = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + net.norm.eps)
        x = F.pad(x, (0, net.out_dim - x.shape[-1]))
        out = out + (p[..., n, None] if p.dim() == 3 else p[:, n, None]) * x
    return out * net.field_scale


@pytest.mark.parametrize("lookup", ["shared", "separate"])
@pytest.mark.parametrize("unify", ["linear", "pad"])
@pytest.mark.parametrize("scope", ["sample", "batch"])
def test_vectorised_supernet_computes_the_papers_equations(lookup, unify, scope):
    """The one-pass supernet (all candidates in one product and one BatchNorm) equals eq. 1-7
    written out per candidate, in values and in every gradient (the mixing weights' included);
    its running statistics are the per-(field, candidate, channel) ones."""
    torch.manual_seed(0)
    net = SupernetEmbedding([5, 7, 3], [[2, 8, 16], [8, 16], [2, 16]], lookup=lookup,
                            unify=unify).double()  # float64: BatchNorm of tiny rows cancels digits
    with torch.no_grad():
        for b in net.biases or []:
            b.normal_()
        net.alpha_logits.normal_()
    ids = torch.randint(0, 3, (64, 3))
    fixed = net.mixing_weights(64).detach() if scope == "sample" else net.alpha().detach()
    fixed.requires_grad_()  # the gradient reaching the mixing weights (and alpha) is compared too
    laid_out = fixed.permute(1, 2, 0) if scope == "sample" else fixed.unsqueeze(-1)  # [F, N, B | 1]
    net._weights_fnb = lambda batch: laid_out
    net.train()
    got = net(ids)
    want = _reference_supernet(net, ids, fixed)
    assert torch.allclose(got, want, atol=1e-12)
    params = [p for p in net.parameters() if p.requires_grad and p is not net.alpha_logits]
    params.append(fixed)
    probe = torch.linspace(-1, 1, 16, dtype=torch.float64)
    g_got = torch.autograd.grad((got * probe).sum(), params, allow_unused=True)
    g_want = torch.autograd.grad((want * probe).sum(), params, allow_unused=True)
    for param, a, b in zip(params, g_got, g_want, strict=True):  # None: not used (b_n cancels)
        zero = torch.zeros_like(param)
        assert torch.allclose(zero if a is None else a, zero if b is None else b, atol=1e-10)
    for n, d in enumerate(net.widths):  # one step of running statistics per candidate channel
        mean, var = net.candidate_statistics(n)
        rows = ids + net.offsets
        x = net.table.weight[rows][..., :d] if lookup == "shared" else net.tables[n].weight[rows]
        if unify == "linear":
            x = torch.einsum("bfd,fde->bfe", x, net.weights[n]) + net.biases[n]
        assert mean.shape == (3, x.shape[-1])
        assert torch.allclose(mean, 0.1 * x.mean(0).detach(), atol=1e-12)
        assert torch.allclose(var, 0.9 + 0.1 * x.var(0).detach(), atol=1e-12)  # unbiased, as BN


def test_per_field_candidates_mask_the_other_widths():
    net = SupernetEmbedding([5, 7], [[2, 8], [4, 8, 16]])
    assert net.widths == [2, 4, 8, 16]
    alpha = net.alpha()
    assert torch.allclose(alpha[0], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    assert torch.allclose(alpha[1], torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3]))
    with torch.no_grad():
        net.alpha_logits[0, 1] = 100.0  # a masked width can never be selected
    assert net.selected_widths()[0] in (2, 8)
    net.train()
    p = net.mixing_weights(10)
    assert p.shape == (10, 2, 4) and torch.all(p[:, 0, 1] == 0) and torch.all(p[:, 1, 0] == 0)


def test_gumbel_softmax_samples_the_architecture_per_example():
    """Eq. 6: p = softmax((log alpha + g) / tau) with Gumbel noise g drawn per example: at tau = 1 the
    largest weight falls on candidate n with probability alpha_n (the Gumbel-max property); at a
    small tau the weights are nearly one-hot; pre-training (``sampling`` off) and evaluation mix
    with alpha itself."""
    net = SupernetEmbedding([5], [2, 8])
    with torch.no_grad():
        net.alpha_logits.copy_(torch.log(torch.tensor([[0.7, 0.3]])))
    net.train()
    net.tau = 1.0
    p = net.mixing_weights(20_000)
    assert p.shape == (20_000, 1, 2)
    assert (p[:, 0, 0] > p[:, 0, 1]).float().mean().item() == pytest.approx(0.7, abs=0.02)
    net.tau = 0.01
    assert (net.mixing_weights(2_000).max(-1).values > 0.99).float().mean().item() > 0.95
    net.sampling = False
    assert torch.allclose(net.mixing_weights(3), torch.tensor([[0.7, 0.3]]))
    net.sampling, net.gumbel = True, "batch"  # one draw for the whole batch
    assert net.mixing_weights(3).shape == (1, 2)
    net.eval()
    assert torch.allclose(net.mixing_weights(3), torch.tensor([[0.7, 0.3]]))


def test_temperature_follows_the_papers_schedule():
    opts = make_method({"name": "autodim"}).options
    assert opts.tau(0) == 1.0
    assert opts.tau(10_000) == pytest.approx(0.5)
    assert opts.tau(10**7) == 0.01


# ---- the search on planted data ------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2])
def test_noise_fields_get_the_smallest_candidate_and_rich_fields_larger(planted, seed):
    # 4 search epochs: at 3 the 5,000-value noise field of seed 1 is still undecided (alpha 0.33 vs
    # 0.43 between 2 and 8) and rounding-level changes anywhere in the step flip its argmax; at 4
    # both noise fields sit at width 2 with alpha > 0.9 for both seeds
    cfg = _cfg(planted[seed], {"name": "autodim", **FAST_SEARCH}, seed=seed, epochs=4)
    seed_everything(seed)
    plan = make_method(cfg.method).search(PreparedDataset(planted[seed]), _ctx(cfg))
    dims = plan.dims
    assert dims[0] == dims[1] == 2, dims  # the pure-noise fields
    assert min(dims[4], dims[5]) > max(dims[0], dims[1]), dims  # the 16-dim fields
    assert plan.embedding_params < 0.5 * plan.fde_embedding_params


# ---- where alpha's gradient comes from -------------------------------------------------------------
def _gradient_sources(path, method: dict) -> tuple[list[str], int]:
    """Run a short search and record which split fed every gradient that reached alpha."""
    cfg = _cfg(path, method, epochs=1)
    seed_everything(0)
    searcher = AutoDimSearch(PreparedDataset(path), _ctx(cfg), make_method(cfg.method).options,
                             joint=method["name"] == "autodim-s")
    current = ["none"]

    def tagged(loader, name):
        real = loader.epoch

        def epoch(e):
            for batch in real(e):
                current[0] = name
                yield batch
        loader.epoch = epoch

    tagged(searcher.train_loader, "train")
    tagged(searcher.valid_loader, "valid")
    sources: list[str] = []
    searcher.supernet.alpha_logits.register_hook(lambda g: sources.append(current[0]))
    result = searcher.run()
    return sources, result.alpha_updates


def test_alpha_learns_only_from_validation_batches(small):
    sources, updates = _gradient_sources(small, {"name": "autodim", "update_every": 3,
                                                 "pretrain_steps": 2})
    assert updates == len(sources) > 0 and set(sources) == {"valid"}


def test_autodim_s_updates_alpha_from_training_batches(small):
    sources, updates = _gradient_sources(small, {"name": "autodim-s", "pretrain_steps": 2})
    assert updates == len(sources) > 0 and set(sources) == {"train"}


# ---- the second-order DARTS step ------------------------------------------------------------------
def test_second_order_step_matches_finite_differences():
    """The unrolled gradient d/d alpha L_val(W - xi grad_W L_train(W, alpha), alpha), computed with
    the finite-difference Hessian-vector product, against central differences of that function."""
    torch.manual_seed(0)
    vocab = [4, 5, 3]
    net = SupernetEmbedding(vocab, [2, 4], gumbel="batch")
    model = build_model("deepfm", vocab, options={"mlp": [6], "dropout": 0.0, "batch_norm": False},
                        embedding=net).double()
    with torch.no_grad():
        net.alpha_logits.copy_(torch.randn_like(net.alpha_logits))
        for p in model.parameters():
            if p is not net.alpha_logits:
                p.add_(0.3 * torch.randn_like(p))
    model.train()
    net.tau = 0.7

    def batch(n, seed):
        g = torch.Generator().manual_seed(seed)
        ids = torch.stack([torch.randint(0, v, (n,), generator=g) for v in vocab], 1)
        return ids, torch.randint(0, 2, (n,), generator=g).double()

    train, valid = batch(32, 1), batch(32, 2)
    alpha = [net.alpha_logits]
    w = [p for p in model.parameters() if p is not net.alpha_logits]
    xi, seed = 0.5, 123
    got, _ = second_order_alpha_grad(model, w, alpha, train, valid, xi=xi, eps_scale=1e-4, seed=seed)

    def unrolled_val_loss() -> float:
        def loss(b, s):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                return batch_loss(model, b)
        saved = [p.detach().clone() for p in w]
        g = torch.autograd.grad(loss(train, seed), w, allow_unused=True)  # b_n cancels in BN
        with torch.no_grad():
            for p, gi in zip(w, g, strict=True):
                if gi is not None:
                    p.sub_(xi * gi)
            value = float(loss(valid, seed + 1))
            for p, s in zip(w, saved, strict=True):
                p.copy_(s)
        return value

    numeric = torch.zeros_like(net.alpha_logits)
    h = 1e-5
    for idx in range(net.alpha_logits.numel()):
        with torch.no_grad():
            net.alpha_logits.view(-1)[idx] += h
        up = unrolled_val_loss()
        with torch.no_grad():
            net.alpha_logits.view(-1)[idx] -= 2 * h
        down = unrolled_val_loss()
        with torch.no_grad():
            net.alpha_logits.view(-1)[idx] += h
        numeric.view(-1)[idx] = (up - down) / (2 * h)
    assert torch.allclose(got[0], numeric, rtol=1e-4, atol=1e-7), (got[0], numeric)
    first, _ = second_order_alpha_grad(model, w, alpha, train, valid, xi=0.0, seed=seed)
    assert not torch.allclose(first[0], numeric, rtol=1e-2)  # the second-order term matters here


def test_second_order_search_runs_and_leaves_weights_consistent(small):
    cfg = _cfg(small, {"name": "autodim", "order": "second", "update_every": 2, "pretrain_steps": 1},
               epochs=1, max_steps_per_epoch=6)
    seed_everything(0)
    plan = make_method(cfg.method).search(PreparedDataset(small), _ctx(cfg))
    assert plan.extra["alpha_updates"] == 3 and plan.options["order"] == "second"


# ---- derive, plan, retrain -------------------------------------------------------------------------
@pytest.mark.parametrize("vocab_cap", [False, True])
def test_end_to_end_run_writes_a_plan_with_alpha_and_retrains_without_batchnorm(small, tmp_path, vocab_cap):
    cfg = _cfg(small, {"name": "autodim", "pretrain_steps": 2, "update_every": 1, "vocab_cap": vocab_cap},
               epochs=1)
    run = tmp_path / "run"
    metrics = run_experiment(cfg, run, quiet=True)
    for name in ("config.yaml", "plan.json", "metrics.json", "log.txt"):
        assert (run / name).exists(), name
    plan = DimensionPlan.load(run / "plan.json")
    assert DimensionPlan.from_dict(json.loads((run / "plan.json").read_text())).to_dict() == plan.to_dict()
    assert set(plan.extra["alpha"]) == set(plan.field_names)
    for name, a in plan.extra["alpha"].items():
        assert len(a) == 5 and sum(a) == pytest.approx(1.0, abs=1e-4)
        searched = plan.extra["candidates"][name][max(range(5), key=a.__getitem__)]  # eq. 13
        vocab = plan.vocab_sizes[plan.field_names.index(name)]
        assert plan.extra["searched_dims"][plan.field_names.index(name)] == searched
        assert plan.dims_by_field()[name] == (min(searched, vocab) if vocab_cap else searched)
    assert plan.extra["vocab_cap"] is vocab_cap
    assert any(v < 32 for v in plan.vocab_sizes), "the data should have a field the cap can cut"
    assert plan.full_dim == 32 and plan.options["lookup"] == "shared"
    assert metrics["embedding_params"] == plan.embedding_params

    method = make_method(cfg.method)
    model = build_model("deepfm", PreparedDataset(small).schema, plan,
                        options=method.retrain_model_options(cfg.model, plan))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.embedding.modules())
    assert model.embedding.embedding_params == plan.embedding_params
    assert model.embedding.out_dim == 32  # aligned to the largest candidate


@pytest.mark.parametrize("variant", ["autodim", "ad-1"])
def test_inherit_copies_the_searched_weights_into_the_retrained_model(small, variant):
    """AD-2 (linear unify) and AD-1 (pad: retrained with zero padding): the retrained embedding
    computes what the supernet computes with alpha pinned to the derived choice."""
    cfg = _cfg(small, {"name": variant, "pretrain_steps": 2, "inherit": True, "unify_bias": True},
               epochs=1)
    cfg.model.align_bias = True
    seed_everything(0)
    method = make_method(cfg.method)
    ds = PreparedDataset(small)
    plan = method.search(ds, _ctx(cfg))
    model = build_model("deepfm", ds.schema, plan, options=method.retrain_model_options(cfg.model, plan))
    method.init_retrain_model(model, plan, _ctx(cfg))
    searched = method.result.model
    net = searched.embedding
    ids = torch.from_numpy(ds.split("valid").x[:256].astype("int64"))
    searched.eval()
    model.eval()
    with torch.no_grad():
        # pin alpha to the derived one-hot choice: the supernet then computes the retrained network
        mask = torch.full_like(net.alpha_logits, -1e9)
        for i, d in enumerate(plan.dims):
            mask[i, net.widths.index(d)] = 0.0
        net.alpha_logits.copy_(mask)
        expected = searched.embedding(ids)
        got = model.embedding(ids)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("value, message", [
    ("[2, x]", "method.candidates[1]: expected an integer, got 'x'"),
    ("[2.5]", "method.candidates[0]: expected an integer, got 2.5"),
    ("[2, true]", "method.candidates[1]: expected an integer, got True"),
    ("[0, 4]", "method.candidates[0]: expected a positive integer, got 0"),
    ("[]", "method.candidates: expected at least one width, got []"),
    ("8", "method.candidates: expected a list of widths, one list per field or a mapping"),
    ("[[2, 4], [8.5]]", "method.candidates[1][0]: expected an integer, got 8.5"),
    ("{f1: [2, x]}", "method.candidates.f1[1]: expected an integer, got 'x'"),
])
def test_candidates_that_are_not_positive_integer_widths_are_one_typed_line(tmp_path, capsys, value,
                                                                            message):
    from embdim.cli import main

    out = tmp_path / "run"
    assert main(["--quiet", "run", "--set", "method.name=autodim", "--set",
                 f"method.candidates={value}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"embdim: error: {message}") and err.count("\n") == 1, err
    assert not out.exists()


def test_candidates_are_typed_like_every_config_value():
    from embdim.search.autodim import AutoDim

    assert make_method({"name": "autodim", "candidates": [2.0, "8", 16]}).options.candidates == [2, 8, 16]
    options = AutoDim.make_options({"candidates": {"default": [4], "f1": [2, 8]}})
    assert options.field_candidates(["f0", "f1"]) == [[4], [2, 8]]
    with pytest.raises(ConfigError, match=r"method.candidates\[0\]: expected an integer, got 2.5"):
        AutoDim(candidates=[2.5])


# ---- paper elements that the defaults must keep ---------------------------------------------------
@pytest.mark.parametrize("variant,align", [("ad-1", "pad"), ("ad-2", "linear"), ("ad-3", "pad"),
                                           ("ad-4", "linear"), ("autodim", "linear")])
def test_retraining_keeps_the_searchs_unifying_method(small, variant, align):
    """Sec. 2.4.2: the retrained model unifies the widths as the search did — zero padding for
    AD-1 / AD-3 (``unify: pad``), the linear transform for AD-2 / AD-4."""
    cfg = _cfg(small, {"name": variant})
    schema = PreparedDataset(small).schema
    plan = DimensionPlan(method=variant, field_names=schema.field_names, vocab_sizes=schema.vocab_sizes,
                         dims=[2, 8, 16, 32], full_dim=32, schema_hash=schema.content_hash)
    options = make_method(cfg.method).retrain_model_options(cfg.model, plan)
    model = build_model("deepfm", schema, plan, options=options)
    assert options.align == align and model.embedding.align == align
    assert model.embedding.out_dim == 32 and (model.embedding.alignment_params == 0) == (align == "pad")
    if align == "linear":  # eq. 1: x W_n + b_n, unless retrain_bias: false leaves it to the model
        assert all(g.bias is not None for g in model.embedding.groups)
        no_bias = make_method({**cfg.method, "retrain_bias": False}).retrain_model_options(cfg.model, plan)
        assert build_model("deepfm", schema, plan, options=no_bias).embedding.groups[0].bias is None


def test_retraining_recalibrates_batchnorm_before_each_validation(small, tmp_path, monkeypatch):
    """The retrained model's BatchNorm statistics are re-estimated before each validation
    (``retrain_bn_recalibration``, default 100 batches), also when a saved AutoDim plan is
    retrained (``method: plan``); ``train.bn_recalibration`` set in the experiment wins; 0 is off."""
    from embdim.train.trainer import Trainer

    schema = PreparedDataset(small).schema
    plan = DimensionPlan(method="autodim", field_names=schema.field_names,
                         vocab_sizes=schema.vocab_sizes, dims=[2, 8, 2, 32], full_dim=32,
                         schema_hash=schema.content_hash, options={"retrain_bias": True})
    plan.save(tmp_path / "plan.json")
    cfg = _cfg(small, {"name": "autodim"})
    assert cfg.train.bn_recalibration == 0
    assert make_method(cfg.method).retrain_train_options(cfg.train, plan).bn_recalibration == 100
    off = make_method({"name": "autodim", "retrain_bn_recalibration": 0})
    assert off.retrain_train_options(cfg.train, plan).bn_recalibration == 0
    own = _cfg(small, {"name": "autodim"}, bn_recalibration=7)
    assert make_method(own.method).retrain_train_options(own.train, plan).bn_recalibration == 7

    calls = []
    real = Trainer.recalibrate_batchnorm
    monkeypatch.setattr(Trainer, "recalibrate_batchnorm",
                        lambda self, epoch: calls.append(self.cfg.bn_recalibration) or real(self, epoch))
    retrain = _cfg(small, {"name": "plan", "path": str(tmp_path / "plan.json")}, epochs=2)
    run_experiment(retrain, tmp_path / "run", quiet=True)
    assert calls == [100, 100]  # once per epoch, before the validation
    assert "retrain: training options set by autodim: {'bn_recalibration': 100}" in (
        tmp_path / "run" / "log.txt").read_text()


def test_a_search_in_which_alpha_never_moves_is_refused(small):
    """Argmax over equal weights would report the smallest width for every field as a result."""
    cfg = _cfg(small, {"name": "autodim", "pretrain_steps": 10}, epochs=1, max_steps_per_epoch=6)
    seed_everything(0)
    with pytest.raises(ConfigError, match=r"alpha was never updated: the search ran 6 W-step\(s\)"):
        make_method(cfg.method).search(PreparedDataset(small), _ctx(cfg))


@pytest.mark.parametrize("order", ["first", "second"])
def test_alpha_steps_leave_the_weights_and_batchnorm_statistics_untouched(small, order):
    """An alpha update reads a validation batch; neither W nor the BatchNorm running statistics
    (of the supernet's unify step and the MLP) may keep anything of it, in either order."""
    cfg = _cfg(small, {"name": "autodim", "order": order, "pretrain_steps": 0, "update_every": 1},
               epochs=1, max_steps_per_epoch=2)
    seed_everything(0)
    search = AutoDimSearch(PreparedDataset(small), _ctx(cfg), make_method(cfg.method).options)
    search.model.train()
    batches = iter(search.train_loader.epoch(0))
    for _ in range(2):  # give the running statistics something to differ from
        w_step(search.model, search.w_params, search.w_optimizer, next(batches))
    state = {k: v.detach().clone() for k, v in search.model.state_dict().items()}
    alpha = [a.detach().clone() for a in search.alpha_params]
    search._alpha_update(next(batches), iter(search.valid_loader.epoch(0)))
    assert any(not torch.equal(a, b) for a, b in zip(alpha, search.alpha_params, strict=True))
    after = search.model.state_dict()
    changed = [k for k, v in state.items() if not torch.equal(v, after[k])
               and not k.endswith("alpha_logits")]
    assert not changed, changed


def test_temperature_anneals_from_the_first_alpha_update(small):
    """tau is tau_start at the first alpha update however long the pre-training was, and anneals
    over the alpha-learning steps only: 6 W-steps, 4 of them pre-training, decay 0.1 -> the last
    step (the 2nd searching one) has tau = 1 - 0.1 x 1."""
    cfg = _cfg(small, {"name": "autodim", "pretrain_steps": 4, "update_every": 1, "tau_decay": 0.1},
               epochs=1, max_steps_per_epoch=6)
    seed_everything(0)
    plan = make_method(cfg.method).search(PreparedDataset(small), _ctx(cfg))
    assert plan.extra["alpha_updates"] == 2
    assert plan.extra["final_tau"] == pytest.approx(0.9)


def test_search_history_records_alpha_per_epoch(small):
    """Each search epoch logs every field's alpha: equal while the first epoch is all pre-training,
    the final alpha (the one eq. 13 derives from) after the last epoch."""
    cfg = _cfg(small, {"name": "autodim", "pretrain_steps": 4, "update_every": 1, "alpha_lr": 0.03},
               epochs=2, max_steps_per_epoch=4)
    seed_everything(0)
    plan = make_method(cfg.method).search(PreparedDataset(small), _ctx(cfg))
    first, last = plan.extra["search_history"]
    assert first["alpha"] == [[0.2] * 5] * len(plan.field_names)
    for name, row in zip(plan.field_names, last["alpha"], strict=True):
        assert row == pytest.approx(plan.extra["alpha"][name], abs=1e-4)
    assert last["alpha"] != first["alpha"]

# ---- the search uses the training step's fast paths ----------------------------------------------
@pytest.mark.parametrize("has_bf16", [True, False])
def test_search_runs_under_bf16_autocast_where_the_cpu_has_it(small, monkeypatch, has_bf16):
    monkeypatch.setattr("embdim.search.autodim.cpu_has_fast_bf16", lambda: has_bf16)
    cfg = _cfg(small, {"name": "autodim", "pretrain_steps": 2, "update_every": 2}, epochs=1,
               max_steps_per_epoch=6, amp=True)
    searcher = AutoDimSearch(PreparedDataset(small), _ctx(cfg), make_method(cfg.method).options)
    assert searcher.amp is has_bf16
    ids = next(iter(searcher.train_loader.epoch(0)))[0]
    seen = []
    first_linear = next(m for m in searcher.model.body.modules() if isinstance(m, nn.Linear))
    first_linear.register_forward_pre_hook(lambda mod, inp: seen.append(torch.is_autocast_enabled("cpu")))
    with searcher._autocast():
        assert searcher.supernet(ids).dtype == torch.float32  # BatchNorm statistics in float32
        searcher.model(ids)
    assert seen == [has_bf16]  # the MLP's products run under bf16 autocast
    result = searcher.run()
    assert result.alpha_updates == 2 and all(math.isfinite(h["train_loss"]) for h in result.history)


@pytest.mark.slow
def test_search_runs_with_train_compile(small):
    """``train.compile`` compiles the search's forward (its Gumbel draws come from another random
    stream than eager, so the two searches are not bit-identical)."""
    cfg = _cfg(small, {"name": "autodim", "pretrain_steps": 2, "update_every": 2}, epochs=1,
               max_steps_per_epoch=6, compile=True)
    searcher = AutoDimSearch(PreparedDataset(small), _ctx(cfg), make_method(cfg.method).options)
    assert searcher.forward is not searcher.model
    result = searcher.run()
    assert result.alpha_updates == 2 and math.isfinite(result.history[-1]["train_loss"])
    assert not torch.allclose(searcher.supernet.alpha(), torch.full_like(searcher.supernet.alpha(),
                                                                         0.2))


@pytest.mark.parametrize("name", ["autodim", "autodim-s", "ad-3"])
def test_a_model_without_embedding_layer_is_refused_before_the_run_folder_exists(small, tmp_path, name):
    with pytest.raises(ConfigError, match=f"{name} searches the embedding layer; model 'lr' has none"):
        run_experiment(_cfg(small, {"name": name}, model="lr"), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("unify", ["linear", "pad"])
@pytest.mark.parametrize("weights", ["alpha", "argmax"])
def test_supernet_evaluation_as_one_affine_map_per_field_equals_eq_7(unify, weights):
    """In eval mode (BatchNorm's running statistics) the shared-lookup supernet is one affine map
    per field; it equals the candidates normalised one by one and mixed by eq. 7."""
    torch.manual_seed(0)
    net = SupernetEmbedding([5, 7, 3], [[2, 8, 16], [8, 16], [2, 16]], unify=unify).double()
    with torch.no_grad():
        for b in net.biases or []:
            b.normal_()
        net.alpha_logits.normal_()
        net.field_scale.uniform_(0.5, 2.0)
        net.norm.running_mean.normal_()
        net.norm.running_var.uniform_(0.5, 2.0)
    ids = torch.randint(0, 3, (32, 3))
    net.eval()
    net.eval_weights = weights
    q = net._weights_fnb(32)
    want = (net._mix(net._normalised_channels(ids), q) * net.field_scale.unsqueeze(-1)).permute(2, 0, 1)
    assert torch.allclose(net(ids), want, atol=1e-12)
