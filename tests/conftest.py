"""Shared fixtures: small planted datasets built in code (tests never read ../shared)."""

import pytest

from embdim.data.synthetic import SyntheticSpec, write_synthetic_dataset


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
