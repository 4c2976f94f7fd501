"""Shared fixtures: small planted datasets built in code (tests never read ../shared), and the
per-test isolation that makes the suite's outcome independent of test order and thread count."""

import os
import random

import numpy as np
import pytest
import torch

from embdim.data.synthetic import SyntheticSpec, write_synthetic_dataset

TEST_SEED = 0


@pytest.fixture(autouse=True)
def isolated_global_state():
    """Every test starts from the same global state and leaves none behind.

    * Python's, numpy's legacy and torch's global RNGs are reseeded before each test (pytest-randomly
      reseeds them too, with its per-run seed; this fixture runs after it and pins them, so a test's
      result never depends on which tests ran before it or on the random-order seed).
    * torch's intra-op thread count and default dtype are restored after each test: the library
      sets the thread count from ``train.threads`` and some tests pin it to 1.
    """
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    random.seed(TEST_SEED)
    np.random.seed(TEST_SEED)
    torch.manual_seed(TEST_SEED)
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """6 fields (f0 and f5 pure noise), 12k rows: trains in about a second per epoch."""
    spec = SyntheticSpec(cardinalities=[5, 50, 200, 30, 100, 400], true_dims=[0, 2, 4, 2, 4, 0],
                         zipf_exponent=1.1, first_order_std=1.0, interaction_std=1.5, seed=3)
    out = tmp_path_factory.mktemp("data") / "planted"
    write_synthetic_dataset(out, spec, 12_000, seed=3)
    return out


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    """4 fields (f0 pure noise), 6k rows: for quick end-to-end method runs."""
    out = tmp_path_factory.mktemp("data") / "small"
    spec = SyntheticSpec(cardinalities=[30, 200, 20, 50], true_dims=[0, 2, 2, 4], seed=5)
    write_synthetic_dataset(out, spec, 6_000, seed=5)
    return out


def pytest_terminal_summary(terminalreporter, config):
    """Print the random-order seed (pytest-randomly) even under ``-q``, so a failure can be replayed."""
    seed = getattr(config.option, "randomly_seed", None)
    if config.pluginmanager.hasplugin("randomly") and seed is not None:
        terminalreporter.write_line(f"tests ran in random order: replay it with "
                                    f"pytest --randomly-seed={seed}")


@pytest.fixture
def interrupt_and_resume(tmp_path, monkeypatch):
    """``(cfg, at_epoch=2, before_resume=None) -> (full, resumed)``: the metrics of an uninterrupted
    run and of one stopped (KeyboardInterrupt) when training epoch ``at_epoch`` starts, then resumed
    with ``--resume`` (``before_resume`` runs in between, e.g. to forbid a second search)."""
    from embdim.experiment import run_experiment
    from embdim.train.trainer import Trainer

    def run(cfg, at_epoch: int = 2, before_resume=None):
        full = run_experiment(cfg, tmp_path / "full", quiet=True)
        real_epoch = Trainer.train_epoch

        def interrupted(self, epoch):
            if epoch == at_epoch:
                raise KeyboardInterrupt
            return real_epoch(self, epoch)

        monkeypatch.setattr(Trainer, "train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, tmp_path / "cut", quiet=True)
        assert not (tmp_path / "cut" / "metrics.json").exists()
        monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
        if before_resume is not None:
            before_resume()
        return full, run_experiment(cfg, tmp_path / "cut", resume=True, quiet=True)

    return run


@pytest.fixture(scope="module")
def torchrec():
    """The ``torchrec`` module; the test is skipped without it, and fails instead where
    ``EMBDIM_REQUIRE_TORCHREC=1`` (CI) says it must run."""
    try:
        import torchrec
    except (ImportError, OSError) as e:
        if os.environ.get("EMBDIM_REQUIRE_TORCHREC") == "1":
            pytest.fail(f"EMBDIM_REQUIRE_TORCHREC=1 but torchrec does not import: {e}")
        pytest.skip(f"torchrec is not installed ({e}); install it as in docs/torchrec.md")
    return torchrec
