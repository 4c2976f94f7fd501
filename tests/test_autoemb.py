"""AutoEmb: streams and popularity, the evaluate-then-train loop, controllers, the second-order
controller update, and the planted stream (fixtures built in code)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch.func import functional_call

from embdim.autoemb.bilevel import controller_gradient
from embdim.autoemb.config import load_stream_config, stream_config_from_dict
from embdim.autoemb.controller import Context, Controller, ControllerWeights, controller_features
from embdim.autoemb.loop import StreamLearner
from embdim.autoemb.model import AutoEmbModel, StreamNorm, per_example_loss
from embdim.autoemb.stream import (
    InteractionStream,
    earlier_counts,
    popularity,
    prepare_stream,
    tie_keys,
)
from embdim.autoemb.synthetic import PlantedStreamSpec, fig7_spec, planted_stream
from embdim.cli import main
from embdim.errors import ConfigError, DataError


def tiny_config(method: str, **overrides) -> object:
    d = {"model": {"widths": [1, 2, 4], "hidden": [16], "task": overrides.pop("task", "regression")},
         "method": {"name": method, "controller_hidden": [8]},
         "train": {"batch_size": 20, "threads": 1, "curve_points": 5}}
    for key, value in overrides.items():
        section, name = key.split("__")
        d.setdefault(section, {})[name] = value
    return stream_config_from_dict(d)


def random_stream(n: int = 400, users: int = 30, items: int = 20, seed: int = 0) -> InteractionStream:
    rng = np.random.default_rng(seed)
    return InteractionStream.from_arrays(rng.integers(0, users, n), rng.integers(0, items, n),
                                         rng.integers(1, 6, n).astype(np.float32),
                                         num_users=users, num_items=items)


# ---- popularity and prepared streams --------------------------------------------------------------

def test_popularity_counts_only_earlier_interactions():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 7, size=500)
    brute = np.array([(ids[:i] == ids[i]).sum() for i in range(len(ids))])
    assert np.array_equal(popularity(ids, 7), brute)
    counts = np.zeros(7, np.int64)  # chunk by chunk gives the same as all at once
    chunked = np.concatenate([earlier_counts(ids[s:s + 64], counts) for s in range(0, 500, 64)])
    assert np.array_equal(chunked, brute)
    assert np.array_equal(counts, np.bincount(ids, minlength=7))
    later_changed = ids.copy()
    later_changed[300:] = 0  # what happens later never changes an earlier popularity
    assert np.array_equal(popularity(later_changed, 7)[:300], brute[:300])


def test_prepare_movielens_sorts_by_time_in_ranges_and_counts_popularity(tmp_path):
    rng = np.random.default_rng(2)
    n = 3000
    users, items = rng.integers(100, 140, n), rng.integers(5000, 5100, n)
    ts = rng.integers(0, 500, n)  # many ties: ordered by the seeded tie keys
    ratings = rng.integers(1, 11, n) / 2
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{i},{r},{t}" for u, i, r, t in
                                                   zip(users, items, ratings, ts, strict=True)]
    (tmp_path / "ratings.csv").write_text("\n".join(lines) + "\n")
    s = prepare_stream("movielens", [tmp_path], tmp_path / "out", chunk_rows=700, range_rows=500,
                       quiet=True)
    order = np.lexsort((tie_keys(np.arange(n), 0), ts))
    a = {k: np.asarray(v) for k, v in s.arrays.items()}
    user_ids = np.load(tmp_path / "out" / "user_ids.npy")
    item_ids = np.load(tmp_path / "out" / "item_ids.npy")
    assert np.array_equal(a["timestamps"], ts[order])
    assert np.array_equal(user_ids[a["users"]], users[order])
    assert np.array_equal(item_ids[a["items"]], items[order])
    assert np.allclose(a["ratings"], ratings[order])
    assert np.array_equal(a["user_popularity"], popularity(a["users"], s.num_users))
    assert np.array_equal(a["item_popularity"], popularity(a["items"], s.num_items))
    assert json.loads((tmp_path / "out" / "stream.json").read_text())["interactions"] == n


def test_prepare_netflix_format_and_bad_line(tmp_path):
    (tmp_path / "combined_data_1.txt").write_text(
        "1:\n7,3,2005-09-06\n8,5,2005-05-13\n2:\n7,4,2004-01-01\n9,1,2005-09-06\n")
    s = prepare_stream("netflix", [tmp_path / "combined_data_1.txt"], tmp_path / "nf", quiet=True)
    assert len(s) == 4 and s.num_users == 3 and s.num_items == 2
    tie = [3.0, 1.0] if tie_keys(np.array([0]), 0)[0] < tie_keys(np.array([3]), 0)[0] else [1.0, 3.0]
    assert np.asarray(s.arrays["ratings"]).tolist() == [4.0, 5.0, *tie]
    assert np.asarray(s.arrays["users"])[0] == np.asarray(s.arrays["users"])[2 + tie.index(3.0)]
    (tmp_path / "bad.txt").write_text("1:\n7,3,2005-09-06\n8,x,2005-05-13\n")
    with pytest.raises(DataError, match=r"bad.txt, line 3, column 'rating'"):
        prepare_stream("netflix", [tmp_path / "bad.txt"], tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad").exists()


def test_netflix_ties_are_a_seeded_shuffle_not_file_order(tmp_path):
    """Whole-day dates: the ratings of one day are listed movie by movie; within a timestamp the
    prepared order is a seeded shuffle (the same for any chunking, another for another seed)."""
    rng = np.random.default_rng(4)
    lines = []
    for movie in range(1, 9):
        lines.append(f"{movie}:")
        lines += [f"{u},{rng.integers(1, 6)},2005-0{1 + day}-01" for day in range(2)
                  for u in rng.choice(400, 50, replace=False)]
    (tmp_path / "combined_data_1.txt").write_text("\n".join(lines) + "\n")

    def movies(seed, **kw):
        out = tmp_path / f"s{seed}-{len(kw)}"
        s = prepare_stream("netflix", [tmp_path / "combined_data_1.txt"], out, tie_seed=seed, quiet=True,
                           **kw)
        item_ids = np.load(out / "item_ids.npy")
        return item_ids[np.asarray(s.arrays["items"])], np.asarray(s.arrays["timestamps"])

    items, ts = movies(0)
    assert np.all(np.diff(ts) >= 0) and len(items) == 800
    first_day = items[:400]
    assert np.array_equal(np.sort(first_day), np.repeat(np.arange(1, 9), 50))
    runs = 1 + np.count_nonzero(np.diff(first_day))  # file order: 8 runs of one movie
    assert runs > 200, runs
    chunked, _ = movies(0, chunk_rows=37, range_rows=100)
    assert np.array_equal(chunked, items)
    assert not np.array_equal(movies(1)[0], items)


# ---- no leakage -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["autoemb", "sam", "darts", "fse"])
def test_batch_is_scored_before_anything_trains_on_it(method):
    """Changing the labels of batch k changes no prediction of batches <= k (the controllers'
    validation batch and virtual step only see earlier interactions), but does change later ones."""
    base = random_stream()
    flipped = {k: np.array(v) for k, v in base.arrays.items()}
    k = 7  # batch index (batch size 20)
    flipped["ratings"][k * 20:(k + 1) * 20] = 6.0 - flipped["ratings"][k * 20:(k + 1) * 20]
    other = InteractionStream(flipped, dict(base.meta))

    def predictions(stream):
        seen: dict[int, torch.Tensor] = {}
        cfg = tiny_config(method, data__offline_fraction=0.5)
        StreamLearner(stream, cfg, quiet=True, on_scored=lambda s, p: seen.__setitem__(s, p)).run()
        return seen

    a, b = predictions(base), predictions(other)
    for start in range(0, (k + 1) * 20, 20):
        assert torch.equal(a[start], b[start]), f"batch at {start} saw labels of batch {k}"
    assert not torch.equal(a[(k + 1) * 20], b[(k + 1) * 20])


@pytest.mark.parametrize("norm", ["running", "renorm"])
@pytest.mark.parametrize("method", ["autoemb", "sam", "darts", "fse"])
def test_a_rows_score_does_not_depend_on_later_rows_of_its_batch(method, norm):
    """Replacing the users and items of the second half of a batch changes no score of its first
    half (nor of any earlier batch): normalisation, popularity and controller inputs of a row use
    its own inputs and earlier batches only (with eq. 2's mini-batch statistics they would not)."""
    base = random_stream()
    changed = {k: np.array(v) for k, v in base.arrays.items()}
    k, cut = 12, 12 * 20 + 10  # batch 12 (online), its rows 10..19
    rng = np.random.default_rng(9)
    changed["users"][cut:(k + 1) * 20] = rng.integers(0, base.num_users, 10)
    changed["items"][cut:(k + 1) * 20] = rng.integers(0, base.num_items, 10)
    other = InteractionStream(changed, dict(base.meta))

    def predictions(stream):
        seen: dict[int, torch.Tensor] = {}
        cfg = tiny_config(method, data__offline_fraction=0.5, method__controller_lr=0.05,
                          model__norm=norm)
        StreamLearner(stream, cfg, quiet=True, on_scored=lambda s, p: seen.__setitem__(s, p)).run()
        return seen

    a, b = predictions(base), predictions(other)
    for start in range(0, k * 20, 20):
        assert torch.equal(a[start], b[start])
    assert torch.equal(a[k * 20][:10], b[k * 20][:10]), "a score depends on later rows of its batch"
    assert not torch.equal(a[k * 20][10:], b[k * 20][10:])


@pytest.mark.parametrize("norm", ["running", "renorm", "batch"])
@pytest.mark.parametrize("method", ["autoemb", "sam", "darts", "fse"])
def test_a_last_batch_of_one_row_is_scored_and_trained(method, norm):
    n = 401  # batches of 20: the last one holds one row
    summary = StreamLearner(random_stream(n=n), tiny_config(method, model__norm=norm), quiet=True).run()
    assert summary["online"]["interactions"] == n - int(n * 0.7)
    assert np.isfinite(summary["online"]["mse"])


def _scale_derivative(mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A ``StreamNorm`` after a few batches; on a new batch ``x``: its output, the running-form
    value, and the derivative of a fixed linear loss along ``x``'s own centred direction."""
    torch.manual_seed(0)
    norm = StreamNorm(6, mode)
    for _ in range(5):
        norm(torch.randn(12, 6) * 2.0 + 0.5)
    mean, var = norm.bn.running_mean.clone(), norm.bn.running_var.clone()
    x = (torch.randn(12, 6) * 0.3 + 1.0).requires_grad_(True)
    out = norm(x)
    (out * torch.randn(12, 6)).sum().backward()
    centred = x.detach() - x.detach().mean(0)
    running_value = (x.detach() - mean) / torch.sqrt(var + norm.bn.eps)
    return out.detach(), running_value, (x.grad * centred).sum()


def test_renorm_scores_with_earlier_statistics_and_has_eq2s_scale_invariant_gradient():
    """``model.norm: renorm``: the value is exactly the running-statistics one (a row's score does
    not depend on its batch), the gradient is eq. 2's (through the batch mean and variance), so
    scaling a candidate's pre-normalisation activations gets no gradient: with ``running`` it does,
    which is how a mixture candidate's running variance collapses."""
    out, running_value, along_scale = _scale_derivative("renorm")
    assert torch.equal(out, running_value)
    assert abs(float(along_scale)) < 1e-4
    _, _, along_scale_running = _scale_derivative("running")
    assert abs(float(along_scale_running)) > 0.1


@pytest.mark.parametrize("one_over_n", [False, True])
def test_soft_selection_with_one_hot_weights_is_the_hard_selection(one_over_n):
    """Sec. 2.4: the user representation is the weighted sum of the candidates; with one-hot
    weights it is eq. 6's selected candidate (``one_over_n: false``, the default), or that
    candidate divided by N (eq. 7 as printed, ``one_over_n: true``)."""
    torch.manual_seed(0)
    model = AutoEmbModel(5, 4, (1, 2, 4), (8,), one_over_n=one_over_n).eval()
    users, items = torch.tensor([0, 3, 4]), torch.tensor([1, 2, 0])
    for k in range(3):
        w = torch.nn.functional.one_hot(torch.full((3,), k), 3).float()
        selected = torch.cat([model.users(users)[:, k], model.items(items)[:, k]], dim=1)
        expected = model.mlp(selected / 3 if one_over_n else selected).squeeze(1)
        assert torch.allclose(model(users, items, w, w), expected, atol=1e-6)
    assert AutoEmbModel(5, 4, (1, 2, 4), (8,)).one_over_n is False
    assert tiny_config("autoemb").model.one_over_n is False


def test_popularity_has_one_definition_for_scoring_validation_and_buckets():
    """Every time the controllers are asked (scoring, validation rows, the virtual step's batch),
    a user's popularity is its number of interactions in the batches before the current one; the
    Fig. 6/7 buckets count scored rows by that same number."""
    stream = random_stream(n=400, users=12, items=9)
    learner = StreamLearner(stream, tiny_config("autoemb"), quiet=True)
    users = np.asarray(stream.arrays["users"])
    items = np.asarray(stream.arrays["items"])
    current = [0]
    seen_calls = [0]
    forward = learner.weights.forward

    def checking_forward(u, i, up, ip):
        before = current[0]
        expected_u = np.bincount(users[:before], minlength=stream.num_users)[u.numpy()]
        expected_i = np.bincount(items[:before], minlength=stream.num_items)[i.numpy()]
        assert np.array_equal(up.numpy(), expected_u) and np.array_equal(ip.numpy(), expected_i)
        seen_calls[0] += 1
        return forward(u, i, up, ip)

    learner.weights.forward = checking_forward
    step = learner.step

    def tracking_step(start, stop, stage):
        current[0] = start
        return step(start, stop, stage)

    learner.step = tracking_step
    summary = learner.run()
    assert seen_calls[0] >= 3 * 19  # validation, virtual step and scoring of every batch
    online_start = int(400 * 0.7)
    expected = {}
    for s0 in range(online_start, 400, 20):
        pop = np.bincount(users[:s0], minlength=stream.num_users)[users[s0:s0 + 20]]
        for k in np.floor(np.log2(1 + pop)).astype(int):
            expected[2 ** k - 1] = expected.get(2 ** k - 1, 0) + 1
    got = {r["min_popularity"]: r["interactions"] for r in summary["by_popularity"]["user"]["online"]}
    assert got == expected


@pytest.mark.parametrize("method", ["autoemb", "darts"])
def test_validation_batch_is_the_batch_just_scored_with_the_dlrs_that_scored_it(method):
    """``method.validation: scored`` (default): the controllers' validation mini-batch is the batch
    just scored, with its popularity and context of scoring time, evaluated by the DLRS that scored
    it (parameters and normalisation statistics from before any update on it): the validation
    predictions equal the recorded scores exactly, batch after batch."""
    learner = StreamLearner(random_stream(), tiny_config(method), quiet=True)
    scored: dict[str, torch.Tensor] = {}
    learner.on_scored = lambda start, out: scored.__setitem__("out", out)
    update, checked = learner.update_controllers, []

    def checking_update(val):
        saved = learner._buffers()
        with torch.no_grad():
            out = learner.forward(val)[0]
        learner._load_buffers(saved)
        assert torch.equal(out, scored["out"])
        checked.append(len(val.users))
        return update(val)

    learner.update_controllers = checking_update
    learner.run()
    assert len(checked) == len(learner.bounds())


def test_validation_batch_comes_from_earlier_interactions():
    learner = StreamLearner(random_stream(), tiny_config("autoemb"), quiet=True)
    for before in (1, 5, 133):
        v = learner.validation_batch(before)
        users = np.asarray(learner.stream.arrays["users"][:before])
        assert set(v.users.tolist()) <= set(users.tolist())


# ---- controllers --------------------------------------------------------------------------------------

def test_controller_outputs_are_distributions():
    torch.manual_seed(0)
    ctx = Context(50, 3)
    ctl = Controller(3, hidden=[16, 16])
    for layer in ctl.net:  # random output layer: not just the uniform start
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=3.0)
    ids = torch.randint(0, 50, (200,))
    ctx.update(ids[:100], torch.softmax(torch.randn(100, 3), 1), torch.rand(100) * 5)
    pop = torch.cat([torch.zeros(50, dtype=torch.long), torch.randint(0, 10**7, (150,))])
    features = controller_features(pop, ids, ctx)
    assert features.shape == (200, 38)  # the paper's input size for N = 3
    w = ctl(features)
    assert w.shape == (200, 3)
    assert torch.all(w >= 0) and torch.allclose(w.sum(1), torch.ones(200))
    assert torch.allclose(Controller(3, [8])(features), torch.full((200, 3), 1 / 3))  # starts uniform


def fig7_online_weights(inputs: list[str], seed: int = 1, **method) -> dict[int, tuple[int, float]]:
    """Online stage of the Fig. 7 planted stream: min popularity of each user bucket ->
    (interactions, mean weight on the widest candidate)."""
    stream, _ = planted_stream(fig7_spec(seed))
    cfg = stream_config_from_dict({
        "model": {"widths": [1, 2, 16], "hidden": [64, 64]},
        "method": {"name": "autoemb", "order": "first", "controller_hidden": [32, 32],
                   "controller_lr": 0.01, "controller_inputs": inputs, **method},
        "train": {"batch_size": 100, "threads": 1, "seed": seed, "optimizer": "adam"}})
    rows = StreamLearner(stream, cfg, quiet=True).run()["by_popularity"]["user"]["online"]
    return {r["min_popularity"]: (r["interactions"], r["weights"][-1]) for r in rows}


def mean_weight(buckets: dict[int, tuple[int, float]], low: int, high: float) -> float:
    """Interaction-weighted mean weight over the buckets with ``low <= min popularity <= high``."""
    chosen = [(n, w) for p, (n, w) in buckets.items() if low <= p <= high]
    return sum(n * w for n, w in chosen) / sum(n for n, _ in chosen)


@pytest.mark.slow
def test_controller_gives_popular_users_the_widest_width_only_when_it_sees_popularity():
    """Fig. 7 on a planted stream where only popular (heavy) users need the wide embedding and
    rare users' own ratings are noise (``fig7_spec``; users arrive over the stream, so rare and
    popular users are scored side by side). Validated on the batch just scored (held out from the
    DLRS, cold and rare rows included), a controller that sees popularity puts much more weight on
    the widest width for users with 63+ interactions than for those with 1-62; with popularity
    blanked (``controller_inputs: []``) the difference disappears. (With the context as well the
    last weights fed back lock some seeds' weights in: docs/autoemb.md, Fig. 7. Seed 3: the one of
    seeds 1-3 where the earlier ``validation: replay`` shows no effect at all.)"""
    seeing = fig7_online_weights(["popularity"], seed=3)
    rare, popular = mean_weight(seeing, 1, 62), mean_weight(seeing, 63, np.inf)
    assert popular > rare + 0.5, seeing
    blind = fig7_online_weights([], seed=3)
    assert abs(mean_weight(blind, 63, np.inf) - mean_weight(blind, 1, 62)) < 0.1, blind


@pytest.mark.parametrize("method", ["autoemb", "sam"])
def test_controller_inputs_ablation_blanks_popularity(method, monkeypatch):
    """``method.controller_inputs: [context]``: the controllers never see popularity (scores are
    the same whatever popularity the loop computes); with the default inputs they do."""
    stream = random_stream()

    def scores(inputs, scramble):
        if scramble:
            monkeypatch.setattr(StreamLearner, "popularity_now",
                                lambda self, u, i: ((u * 7919) % 1000, (i * 104729) % 1000))
        else:
            monkeypatch.undo()
        seen: dict[int, torch.Tensor] = {}
        cfg = tiny_config(method, method__controller_inputs=inputs, method__controller_lr=0.05)
        StreamLearner(stream, cfg, quiet=True, on_scored=lambda s, p: seen.__setitem__(s, p)).run()
        return torch.cat([seen[k] for k in sorted(seen)])

    assert torch.equal(scores(["context"], False), scores(["context"], True))
    assert not torch.equal(scores(["popularity", "context"], False),
                           scores(["popularity", "context"], True))
    with pytest.raises(ConfigError, match="controller_inputs"):
        tiny_config(method, method__controller_inputs=["popularity", "clicks"])


# ---- the second-order update -------------------------------------------------------------------------

def test_second_order_update_matches_autograd_through_the_unrolled_step():
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = AutoEmbModel(6, 5, widths=[1, 2, 3], hidden=[8], task="classification")
        weights = ControllerWeights(6, 5, 3, hidden=[6])
        for m in weights.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=0.5)
        w_params, theta = list(model.parameters()), list(weights.parameters())

        def batch(seed):
            g = torch.Generator().manual_seed(seed)
            return (torch.randint(0, 6, (16,), generator=g), torch.randint(0, 5, (16,), generator=g),
                    torch.randint(0, 5, (16,), generator=g), torch.randint(0, 40, (16,), generator=g),
                    torch.randint(0, 40, (16,), generator=g))

        train, val = batch(1), batch(2)

        def loss_with(params, b):
            users, items, labels, up, ip = b
            alpha, beta = weights(users, items, up, ip)
            out = functional_call(model, params, (users, items, alpha, beta))
            return per_example_loss("classification", out, labels)[0].mean()

        names = [n for n, _ in model.named_parameters()]
        current = lambda: dict(zip(names, w_params, strict=True))  # noqa: E731
        xi = 0.5
        for _ in range(3):  # running statistics away from their start
            loss_with(current(), batch(3 + _))
        buffers = {k: b.clone() for k, b in model.named_buffers()}
        # exact: differentiate through W' = W - xi grad_W L_train(W, Theta), every pass with the
        # running statistics as they are now (eval mode: no update)
        model.eval()
        g = torch.autograd.grad(loss_with(current(), train), w_params, create_graph=True)
        unrolled = {n: p - xi * gi for n, p, gi in zip(names, w_params, g, strict=True)}
        exact = torch.autograd.grad(loss_with(unrolled, val), theta)
        model.train()  # as in the loop: each pass would update the statistics unless restored
        approx, _ = controller_gradient(w_params, theta, lambda: loss_with(current(), train),
                                        lambda: loss_with(current(), val), xi=xi, eps_scale=1e-5,
                                        modules=[model])
        first, _ = controller_gradient(w_params, theta, None, lambda: loss_with(current(), val), xi=0.0,
                                       modules=[model])
        flat = lambda ts: torch.cat([t.flatten() for t in ts])  # noqa: E731
        err = (flat(approx) - flat(exact)).norm() / flat(exact).norm()
        first_err = (flat(first) - flat(exact)).norm() / flat(exact).norm()
        assert err < 1e-5, err
        assert first_err > 100 * err  # the second-order term is not negligible here
        # W and the normalisation statistics are left as they were
        assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())
        model.eval()
        g2 = torch.autograd.grad(loss_with(current(), train), w_params)
        assert all(torch.equal(a, b) for a, b in zip(g, g2, strict=True))
    finally:
        torch.set_default_dtype(torch.float32)


def test_second_order_update_with_sparse_tables_equals_the_dense_one():
    torch.manual_seed(0)
    dense = AutoEmbModel(30, 20, widths=[1, 2, 4], hidden=[8])
    sparse = AutoEmbModel(30, 20, widths=[1, 2, 4], hidden=[8], sparse=True)
    sparse.load_state_dict(dense.state_dict())
    weights = ControllerWeights(30, 20, 3, hidden=[6])
    for m in weights.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.5)
    g = torch.Generator().manual_seed(1)
    train, val = [(torch.randint(0, 30, (16,), generator=g), torch.randint(0, 20, (16,), generator=g),
                   torch.randint(0, 2, (16,), generator=g).float()) for _ in range(2)]

    def loss(model, b):
        pop = torch.zeros(16, dtype=torch.long)
        alpha, beta = weights(b[0], b[1], pop, pop)
        return per_example_loss("regression", model(b[0], b[1], alpha, beta), b[2])[0].mean()

    theta = list(weights.parameters())
    results = []
    for model in (dense, sparse):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        tables = [model.users.table.weight, model.items.table.weight] if model is sparse else []
        grads, _ = controller_gradient(list(model.parameters()), theta, lambda m=model: loss(m, train),
                                       lambda m=model: loss(m, val), xi=0.5, modules=[model],
                                       sparse_params=tables)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        results.append(torch.cat([x.flatten() for x in grads]))
    assert torch.allclose(results[0], results[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["autoemb", "fse"])
def test_sparse_tables_touch_only_the_rows_of_the_batch(method):
    """``train.optimizer: sparse_adam``: a step (controller update included) changes the id-table
    rows of the batch's users and items only (dense Adam moves every row with momentum)."""
    stream = random_stream(n=400, users=60, items=40)
    learner = StreamLearner(stream, tiny_config(method, train__optimizer="sparse_adam"), quiet=True)
    for start in range(0, 200, 20):
        learner.step(start, start + 20, 0)
    before = [t.weight.detach().clone() for t in learner.model.tables()]
    learner.step(200, 220, 0)
    for table, old, ids in zip(learner.model.tables(), before, ("users", "items"), strict=True):
        changed = torch.nonzero((table.weight != old).any(1)).flatten()
        batch_ids = set(np.asarray(stream.arrays[ids][200:220]).tolist())
        assert len(changed) and set(changed.tolist()) <= batch_ids
    assert np.isfinite(learner.run()["online"]["mse"])


@pytest.mark.parametrize("method", ["fse", "autoemb"])
def test_sgd_takes_the_plain_gradient_step_that_eq9s_virtual_step_stands_for(method):
    """``train.optimizer: sgd``: the DLRS's step on a batch is ``W - lr grad_W L_train`` (the
    batch's mean loss, from the pass that scored it), exactly eq. 9's virtual step
    ``W - xi grad_W L_train`` with ``xi = train.lr``; Adam's step is not."""
    stream = random_stream()
    steps = {}
    for optimizer in ("sgd", "adam"):
        cfg = tiny_config(method, train__optimizer=optimizer, train__lr=0.05)
        assert cfg.xi == cfg.train.lr
        torch.manual_seed(0)
        learner = StreamLearner(stream, cfg, quiet=True)
        learner.step(0, 20, 0)  # a first batch: running statistics, Adam state, a previous batch
        model = copy.deepcopy(learner.model)
        b = learner.batch(20, 40)
        with torch.no_grad():
            weights = () if learner.weights is None else learner.weights(b.users, b.items, b.user_pop,
                                                                         b.item_pop)
        loss = per_example_loss("regression", model(b.users, b.items, *weights), b.labels)[0].mean()
        params = list(model.parameters())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        learner.step(20, 40, 0)
        steps[optimizer] = max(float((p - (w - 0.05 * (0 if g is None else g))).detach().abs().max())
                               for p, w, g in zip(learner.model.parameters(), params, grads, strict=True))
    assert steps["sgd"] < 1e-6 < 1e-3 < steps["adam"]


def test_the_default_dlrs_step_is_the_papers():
    """By default the DLRS steps by plain gradient descent at the paper's learning rates (sec. 3.2:
    DLRS 0.01, controllers 0.001), the step eq. 9 unrolls with xi = lr."""
    cfg = load_stream_config(None, [])
    assert (cfg.train.optimizer, cfg.train.lr, cfg.method.controller_lr) == ("sgd", 0.01, 0.001)
    assert cfg.xi == cfg.train.lr


# ---- config, CLI, report ---------------------------------------------------------------------------------

def test_config_refuses_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown key"):
        load_stream_config(None, ["method.lr=0.1"])
    with pytest.raises(ConfigError, match="method.name"):
        load_stream_config(None, ["method.name=nope"])
    with pytest.raises(ConfigError, match="method.validation"):
        load_stream_config(None, ["method.validation=later"])
    cfg = load_stream_config(None, ["method.order=first"])
    assert cfg.xi == 0.0 and load_stream_config(None, []).xi == cfg.train.lr


def test_sparse_tables_is_an_alias_of_optimizer_sparse_adam():
    """``train.sparse_tables: true|false`` (older configs and run folders) reads as the CTR
    trainer's key ``train.optimizer: sparse_adam|adam``: the same lazy-Adam id tables, and the
    resolved config names only the new key."""
    for alias, name in ((True, "sparse_adam"), (False, "adam")):
        cfg = tiny_config("autoemb", train__sparse_tables=alias)
        assert cfg.train.optimizer == name and cfg.sparse_tables is alias
        assert "sparse_tables" not in cfg.to_dict()["train"]
        learner = StreamLearner(random_stream(), cfg, quiet=True)
        assert (learner.w_opt.sparse is not None) is alias
    with pytest.raises(ConfigError, match="^train.sparse_tables: expected true or false, got 'yes'$"):
        tiny_config("fse", train__sparse_tables="yes")
    with pytest.raises(ConfigError, match="contradicts train.optimizer: adam"):
        tiny_config("fse", train__sparse_tables=True, train__optimizer="adam")
    with pytest.raises(ConfigError, match="^train.optimizer 'rowwise_adagrad': a streaming run takes "
                                          "sgd, adam or sparse_adam$"):
        tiny_config("fse", train__optimizer="rowwise_adagrad")


def test_a_run_folder_written_with_the_old_key_resumes_and_reports(tmp_path, capsys):
    """A run folder whose ``config.yaml`` has ``train.sparse_tables`` (written before the key was
    renamed) resumes with the same config given either way, and is read by the reports."""
    import yaml

    stream_dir = random_stream().save(tmp_path / "s")
    args = _resume_args(stream_dir, "fse", tmp_path / "old", "--set", "train.optimizer=sparse_adam")
    assert main(args) == 0
    m = json.loads((tmp_path / "old" / "metrics.json").read_text())
    cfg = yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())
    assert cfg["train"].pop("optimizer") == "sparse_adam"
    cfg["train"]["sparse_tables"] = True  # what the folder held before the rename
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    capsys.readouterr()
    assert main(["stream", "report", str(tmp_path / "old"), "--out", str(tmp_path / "rep"),
                 "--no-plots"]) == 0
    assert f"{m['online_mse']:.4f}" in capsys.readouterr().out
    # an unfinished run of the old config resumes under the new key (and under the old one)
    (tmp_path / "old" / "metrics.json").unlink()
    assert main(args + ["--resume"]) == 0
    assert _without_timings(tmp_path / "old" / "metrics.json") == {
        k: v for k, v in m.items() if k not in TIMINGS}
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (tmp_path / "old" / "metrics.json").unlink()
    old_args = [a.replace("train.optimizer=sparse_adam", "train.sparse_tables=true") for a in args]
    assert main(old_args + ["--resume"]) == 0


def test_cli_prepare_run_report(tmp_path, capsys):
    rng = np.random.default_rng(3)
    n = 600
    lines = [f"{u}::{i}::{r}::{1000 + k}" for k, (u, i, r) in enumerate(zip(
        rng.integers(1, 20, n), rng.integers(1, 15, n), rng.integers(1, 6, n), strict=True))]
    (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n")
    assert main(["--quiet", "stream", "prepare", "movielens", str(tmp_path / "ratings.dat"),
                 "--out", str(tmp_path / "s")]) == 0
    common = ["--set", f"data.path={tmp_path / 's'}", "--set", "model.widths=[1,2,4]",
              "--set", "model.hidden=[8]", "--set", "method.controller_hidden=[8]",
              "--set", "train.batch_size=50", "--set", "model.task=classification"]
    for method in ("fse", "autoemb"):
        for seed in (1, 2):
            assert main(["--quiet", "stream", "run", *common, "--set", f"method.name={method}",
                         "--set", f"train.seed={seed}",
                         "--out", str(tmp_path / "runs" / f"{method}{seed}")]) == 0
    m = json.loads((tmp_path / "runs" / "autoemb1" / "metrics.json").read_text())
    assert {"online_cross_entropy", "online_accuracy", "by_popularity", "curve",
            "interactions_per_second"} <= set(m)
    assert m["online"]["interactions"] == 600 - int(600 * 0.7)
    assert (tmp_path / "runs" / "autoemb1" / "weights.png").exists()
    capsys.readouterr()
    assert main(["stream", "report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 0
    table = capsys.readouterr().out
    assert "| classification | CE loss |" in table and "AutoEmb" in table and "FSE" in table
    assert (tmp_path / "rep" / "curve_s_classification.png").exists()
    # `embdim report` over the same folders embeds the streaming table and its plots
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep2")]) == 0
    report = (tmp_path / "rep2" / "report.md").read_text()
    assert "## AutoEmb (streaming runs)" in report and "| classification | CE loss |" in report
    assert "![" in report and (tmp_path / "rep2" / "curve_s_classification.png").exists()
    assert main(["stream", "run", *common, "--out", str(tmp_path / "runs" / "fse1")]) == 2  # finished


# ---- resume, plan.json, `embdim run` on a stream ---------------------------------------------------

TIMINGS = ("seconds", "interactions_per_second")


def _resume_args(stream_dir, method, out, *extra):
    return ["--quiet", "stream", "run", "--set", f"data.path={stream_dir}", "--set", "model.widths=[1,2,4]",
            "--set", "model.hidden=[16]", "--set", "method.controller_hidden=[8]",
            "--set", "method.controller_lr=0.05", "--set", "data.offline_fraction=0.5",
            "--set", "train.batch_size=20", "--set", "train.threads=1", "--set", "train.curve_points=5",
            "--set", "train.checkpoint_seconds=0", "--set", f"method.name={method}", *extra,
            "--out", str(out), "--no-plots"]


def _without_timings(path):
    m = json.loads(path.read_text())
    for k in TIMINGS:
        m.pop(k)
    return m


@pytest.mark.parametrize("method", ["autoemb", "sam", "darts", "fse"])
@pytest.mark.parametrize("every,stop_after,optimizer", [(3, 15, "adam"), (0, 17, "sgd")])
def test_interrupted_run_resumes_to_the_same_metrics(tmp_path, monkeypatch, method, every, stop_after,
                                                     optimizer):
    """Interrupt in the online part (in batch 15 or 17 of 20; checkpoints every 3 batches and at the
    end of the offline stage: after batches 3, 6, 9, 10, 13; or only after batch 10), resume from
    there (a batch or more is redone): metrics.json and plan.json are exactly those
    of an uninterrupted run (controller lr 0.05 so that contexts, controller optimiser, sampler and
    the previous batch all matter: leaving any of them out of the checkpoint changes the metrics;
    with the DLRS on Adam, its moments too)."""
    stream_dir = random_stream().save(tmp_path / "s")
    extra = ("--set", f"train.checkpoint_every={every}", "--set", f"train.optimizer={optimizer}")
    assert main(_resume_args(stream_dir, method, tmp_path / "whole", *extra)) == 0
    calls = [0]
    step = StreamLearner.step

    def interrupting_step(self, *args):
        calls[0] += 1
        if calls[0] == stop_after:
            raise KeyboardInterrupt
        return step(self, *args)

    monkeypatch.setattr(StreamLearner, "step", interrupting_step)
    out = tmp_path / "cut"
    assert main(_resume_args(stream_dir, method, out, *extra)) == 130
    assert (out / "checkpoints" / "last.pt").exists() and not (out / "metrics.json").exists()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"] == (13 if every else 10)
    monkeypatch.setattr(StreamLearner, "step", step)
    assert main(_resume_args(stream_dir, method, out, *extra)) == 2  # non-empty: needs --resume
    assert main(_resume_args(stream_dir, method, out, *extra, "--resume")) == 0
    whole = _without_timings(tmp_path / "whole" / "metrics.json")
    resumed = _without_timings(out / "metrics.json")
    assert resumed["online"] == whole["online"] and resumed["by_popularity"] == whole["by_popularity"]
    assert resumed == whole
    plan = json.loads((out / "plan.json").read_text())
    assert plan == json.loads((tmp_path / "whole" / "plan.json").read_text())
    assert "resumed from" in (out / "log.txt").read_text()


@pytest.mark.parametrize("method", ["autoemb", "fse"])
def test_interrupted_run_with_sparse_tables_resumes_to_the_same_metrics(tmp_path, monkeypatch, method):
    """The lazy-Adam state of the id tables is in the checkpoint too."""
    stream_dir = random_stream().save(tmp_path / "s")
    extra = ("--set", "train.checkpoint_every=3", "--set", "train.optimizer=sparse_adam")
    assert main(_resume_args(stream_dir, method, tmp_path / "whole", *extra)) == 0
    calls = [0]
    step = StreamLearner.step

    def interrupting_step(self, *args):
        calls[0] += 1
        if calls[0] == 15:
            raise KeyboardInterrupt
        return step(self, *args)

    monkeypatch.setattr(StreamLearner, "step", interrupting_step)
    assert main(_resume_args(stream_dir, method, tmp_path / "cut", *extra)) == 130
    monkeypatch.setattr(StreamLearner, "step", step)
    assert main(_resume_args(stream_dir, method, tmp_path / "cut", *extra, "--resume")) == 0
    assert _without_timings(tmp_path / "cut" / "metrics.json") == _without_timings(
        tmp_path / "whole" / "metrics.json")


def test_resume_refuses_a_changed_config_and_a_finished_run(tmp_path, capsys):
    stream_dir = random_stream().save(tmp_path / "s")
    out = tmp_path / "r"
    cfg = stream_config_from_dict({"data": {"path": str(stream_dir)},
                                   "model": {"widths": [1, 2], "hidden": [8]},
                                   "method": {"controller_hidden": [4]}, "train": {"batch_size": 50}})
    (out / "checkpoints").mkdir(parents=True)
    from embdim.autoemb.run import run_stream
    from embdim.io import atomic_write_yaml

    atomic_write_yaml(out / "config.yaml", cfg.to_dict())
    changed = stream_config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "lr": 0.1}})
    with pytest.raises(ConfigError, match=r"differs in \['train.lr: 0.01 -> 0.1'\]"):
        run_stream(changed, out, quiet=True, plots=False, resume=True)
    with pytest.raises(ConfigError, match="pass --resume"):
        run_stream(cfg, out, quiet=True, plots=False)
    run_stream(cfg, out, quiet=True, plots=False, resume=True)  # no checkpoint yet: from the start
    assert "no checkpoint" in (out / "log.txt").read_text()
    assert main(["stream", "run", str(out / "config.yaml"), "--out", str(out), "--resume"]) == 2
    assert "finished run" in capsys.readouterr().err


def test_checkpoint_of_another_stream_is_refused(tmp_path):
    from embdim.errors import SchemaMismatchError

    cfg = tiny_config("autoemb", train__checkpoint_every=2)
    learner = StreamLearner(random_stream(), cfg, quiet=True, checkpoint_path=tmp_path / "last.pt")
    learner.run()
    other = StreamLearner(random_stream(n=300), cfg, quiet=True)
    with pytest.raises(SchemaMismatchError, match="interactions: checkpoint 400 vs now 300"):
        other.load_checkpoint(tmp_path / "last.pt")
    # another DLRS optimiser (sgd's empty state would not fit Adam's)
    adam = StreamLearner(random_stream(), tiny_config("autoemb", train__optimizer="adam"), quiet=True)
    with pytest.raises(SchemaMismatchError, match="optimizer: checkpoint 'sgd' vs now 'adam'"):
        adam.load_checkpoint(tmp_path / "last.pt")


def test_plan_json_describes_the_learned_rule_consistently_with_metrics(tmp_path):
    from embdim.autoemb.plan import load_stream_plan, rule_width
    from embdim.autoemb.run import run_stream
    from embdim.errors import EmbdimError
    from embdim.plan import DimensionPlan

    stream = random_stream(n=600)
    widths = [1, 2, 4]
    for method in ("autoemb", "fse"):
        cfg = tiny_config(method, method__controller_lr=0.05)
        m = run_stream(cfg, tmp_path / method, stream=stream, quiet=True, plots=False)
        plan = load_stream_plan(tmp_path / method / "plan.json")
        assert plan.to_dict() == DimensionPlan.load(tmp_path / method / "plan.json").to_dict()
        assert plan.method == method and plan.extra["kind"] == "stream"
        assert plan.field_names == ["user", "item"] and plan.vocab_sizes == [30, 20]
        assert plan.embedding_params == m["embedding_params"]
        assert plan.fde_embedding_params == (stream.num_users + stream.num_items) * sum(widths)
        if method == "fse":
            assert plan.value_dim_rule == {"kind": "uniform", "width": 7} and plan.embedding is None
            continue
        rule = plan.value_dim_rule
        assert rule["kind"] == "popularity_buckets" and rule["candidates"] == widths
        assert plan.dims == [4, 4] and plan.embedding["kind"] == "autoemb_mixture"
        final = {"user": np.bincount(np.asarray(stream.arrays["users"]), minlength=stream.num_users),
                 "item": np.bincount(np.asarray(stream.arrays["items"]), minlength=stream.num_items)}
        hard = 0
        for name in ("user", "item"):
            online = [r for r in m["by_popularity"][name]["online"] if "weights" in r]
            rows = rule[name]
            assert [r["bucket"] for r in rows] == [r["bucket"] for r in online]
            for row, r in zip(rows, online, strict=True):
                assert row["weights"] == r["weights"] and row["interactions"] == r["interactions"]
                assert row["expected_width"] == pytest.approx(float(np.dot(r["weights"], widths)))
                assert row["argmax_width"] == widths[int(np.argmax(r["weights"]))]
                assert rule_width(plan, name, row["min_popularity"]) == row["argmax_width"]
            assert sum(r["entities_at_end"] for r in rows) <= len(final[name])
            hard += sum(rule_width(plan, name, int(p)) for p in final[name])
        assert plan.extra["hard_embedding_params"] == hard
        from embdim.nn.models import build_model

        with pytest.raises(EmbdimError, match="autoemb_mixture"):  # no CTR model builds the mixture
            build_model("fm", plan.vocab_sizes, plan)


def _legacy_stream_plan(plan) -> dict:
    """``plan`` in the streaming plan.json format of older run folders (before it was a
    DimensionPlan), key by key as that version wrote it."""
    mixture = plan.embedding is not None
    candidates = plan.embedding["candidates"] if mixture else [plan.full_dim]
    width = plan.embedding["table_width"] if mixture else plan.full_dim
    fields = [{"name": n, "vocab_size": v, "table_width": width, "embedding_params": v * width}
              for n, v in zip(plan.field_names, plan.vocab_sizes, strict=True)]
    return {"format_version": 1, "kind": "stream", "method": plan.method, "options": plan.options,
            "stream_hash": plan.schema_hash, "candidates": candidates, "aligned_dim": max(candidates),
            "fields": fields, "embedding_params": sum(f["embedding_params"] for f in fields),
            "fde_embedding_params": sum(plan.vocab_sizes) * plan.full_dim, "fde_width": plan.full_dim,
            "hard_embedding_params": plan.extra["hard_embedding_params"],
            "value_dim_rule": plan.value_dim_rule}


@pytest.mark.parametrize("method", ["autoemb", "fse"])
def test_a_plan_json_in_the_older_streaming_format_is_still_read(tmp_path, method):
    """Run folders written before the streaming plan was a DimensionPlan: load_stream_plan reads
    their plan.json as the same plan (rule, counts, stream hash); DimensionPlan.load points to it."""
    from embdim.autoemb.plan import load_stream_plan, rule_width
    from embdim.autoemb.run import run_stream
    from embdim.errors import EmbdimError
    from embdim.plan import DimensionPlan

    run_stream(tiny_config(method, method__controller_lr=0.05), tmp_path / "r", stream=random_stream(),
               quiet=True, plots=False)
    plan = load_stream_plan(tmp_path / "r" / "plan.json")
    (tmp_path / "old.json").write_text(json.dumps(_legacy_stream_plan(plan)))
    old = load_stream_plan(tmp_path / "old.json")
    assert old.to_dict() == plan.to_dict()
    assert old.embedding_params == plan.embedding_params and old.schema_hash == plan.schema_hash
    assert rule_width(old, "user", 5) == rule_width(plan, "user", 5)
    with pytest.raises(EmbdimError, match="load_stream_plan"):
        DimensionPlan.load(tmp_path / "old.json")
    (tmp_path / "ctr.json").write_text(json.dumps(DimensionPlan(
        method="fde", field_names=["a"], vocab_sizes=[3], dims=[2], full_dim=2).to_dict()))
    with pytest.raises(EmbdimError, match="not a streaming plan"):
        load_stream_plan(tmp_path / "ctr.json")


def test_embdim_run_dispatches_a_stream_config(tmp_path, capsys):
    stream_dir = random_stream().save(tmp_path / "s")
    common = ["--set", f"data.path={stream_dir}", "--set", "model.widths=[1,2]", "--set", "model.hidden=[8]",
              "--set", "method.controller_hidden=[4]", "--set", "train.batch_size=50"]
    assert main(["--quiet", "run", *common, "--set", "method.name=sam", "--out", str(tmp_path / "r")]) == 0
    assert {"metrics.json", "plan.json", "config.yaml"} <= {p.name for p in (tmp_path / "r").iterdir()}
    assert "online_mse=" in capsys.readouterr().out
    assert main(["run", *common, "--set", "method.name=autodim", "--out", str(tmp_path / "x")]) == 2
    assert "is an interaction stream" in capsys.readouterr().err
    assert main(["run", "--set", f"data.path={tmp_path}", "--set", "method.name=autoemb",
                 "--out", str(tmp_path / "y")]) == 2
    assert "embdim stream prepare" in capsys.readouterr().err
    assert main(["run", *common, "--set", "model.name=deepfm", "--out", str(tmp_path / "z")]) == 2
    assert "one model" in capsys.readouterr().err


# ---- Fig. 1: fixed widths by popularity -----------------------------------------------------------

def test_popularity_study_trains_each_width_on_x_interactions_per_user(tmp_path, capsys):
    from embdim.autoemb.study import popularity_study

    stream, _ = planted_stream(PlantedStreamSpec(num_users=100, num_items=60, interactions=8000,
                                                 latent_dim=4, seed=3))
    r = popularity_study(stream, widths=[1, 8], xs=[2, 60], test_per_user=10, hidden=[16], epochs=3)
    by = {(row["x"], row["width"]): row for row in r["rows"]}
    assert set(by) == {(2, 1), (2, 8), (60, 1), (60, 8)}
    assert by[2, 8]["train_interactions"] + 58 * r["users"] == by[60, 8]["train_interactions"]
    assert r["test_interactions"] == 10 * r["users"]
    assert by[60, 8]["mse"] < by[2, 8]["mse"] - 0.01  # more interactions per user: better
    stream.save(tmp_path / "s")
    assert main(["stream", "study", str(tmp_path / "s"), "--out", str(tmp_path / "st"), "--widths", "1",
                 "--x", "2", "--epochs", "1", "--no-plots"]) == 0
    assert "| x (training interactions per user) |" in capsys.readouterr().out
    assert json.loads((tmp_path / "st" / "study.json").read_text())["rows"][0]["x"] == 2
