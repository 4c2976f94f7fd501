"""A planted interaction stream where popular users need more embedding capacity (the premise of
AutoEmb, sec. 1 and Fig. 1), for the demo and the tests.

Users are *light* or *heavy*. Heavy users (``heavy_fraction`` of them) make ``heavy_share`` of the
interactions, so they are the only ones that become popular. A light user's rating depends on one
number (its bias, plus the item's bias): a width-1 or width-2 embedding is enough and is learned
from a handful of interactions. A heavy user's rating is ``<p_u, q_i>`` over ``latent_dim``
independent factors, which a small embedding cannot represent. So the best width grows with a
user's popularity, and a controller that works should move weight to the largest width as
popularity grows.

Ratings are integers 1..5: ``clip(round(3 + 1.25 * score + noise), 1, 5)`` with the score scaled to
unit variance; interactions are drawn independently (user by activity, item Zipf-distributed), one
per timestamp.

``arrival`` (default 0: every user is active from the start) spreads the users' first appearance
over the first ``arrival`` fraction of the stream: user ``u`` arrives at ``a_u ~ U(0, arrival)`` and
its interactions fall at uniform times in ``[a_u, 1]``. Then at any moment new (cold) users and
popular ones are scored side by side, so that low popularity no longer just means "early in the
stream" (when every model is untrained).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from embdim.autoemb.stream import InteractionStream


@dataclass(frozen=True)
class PlantedStreamSpec:
    num_users: int = 500
    num_items: int = 300
    interactions: int = 60_000
    heavy_fraction: float = 0.1  # share of users that are heavy
    heavy_share: float = 0.7  # share of interactions made by heavy users
    latent_dim: int = 16  # factors of a heavy user's taste
    item_zipf: float = 0.8  # item popularity ~ rank^-item_zipf
    noise: float = 0.3  # std of the rating noise (in rating units)
    light_user_bias: float = 1.0  # weight of a light user's own bias in its score (0: item only)
    light_noise: float | None = None  # std of a light user's rating noise (None: ``noise``)
    arrival: float = 0.0  # users arrive uniformly over this fraction of the stream (0: all at once)
    seed: int = 0


def planted_stream(spec: PlantedStreamSpec = PlantedStreamSpec()) -> tuple[InteractionStream,
                                                                              np.ndarray]:
    """The stream and the boolean ``[num_users]`` mask of heavy users."""
    rng = np.random.default_rng(spec.seed)
    nu, ni, n = spec.num_users, spec.num_items, spec.interactions
    heavy = np.zeros(nu, dtype=bool)
    heavy[rng.choice(nu, size=max(1, int(round(spec.heavy_fraction * nu))), replace=False)] = True
    activity = np.where(heavy, spec.heavy_share / heavy.sum(),
                        (1 - spec.heavy_share) / max(1, (~heavy).sum()))
    users = rng.choice(nu, size=n, p=activity / activity.sum())
    item_weight = 1.0 / np.arange(1, ni + 1) ** spec.item_zipf
    items = rng.permutation(ni)[rng.choice(ni, size=n, p=item_weight / item_weight.sum())]

    user_bias, item_bias = rng.normal(size=nu), rng.normal(size=ni)
    p = rng.normal(size=(nu, spec.latent_dim))
    q = np.eye(spec.latent_dim)[rng.integers(0, spec.latent_dim, size=ni)] * np.sqrt(spec.latent_dim)
    b = spec.light_user_bias
    simple = (b * user_bias[users] + 0.5 * item_bias[items]) / np.sqrt(b * b + 0.25)
    rich = np.einsum("nk,nk->n", p[users], q[items]) / np.sqrt(spec.latent_dim)
    score = np.where(heavy[users], rich, simple)
    light_noise = spec.noise if spec.light_noise is None else spec.light_noise
    noise = np.where(heavy[users], spec.noise, light_noise) * rng.standard_normal(size=n)
    ratings = np.clip(np.round(3 + 1.25 * score + noise), 1, 5)
    if spec.arrival > 0:
        arrives = rng.uniform(0.0, spec.arrival, size=nu)
        when = arrives[users] + (1.0 - arrives[users]) * rng.uniform(size=n)
        order = np.argsort(when, kind="stable")
        users, items, ratings = users[order], items[order], ratings[order]
    stream = InteractionStream.from_arrays(users, items, ratings.astype(np.float32),
                                           num_users=nu, num_items=ni, source="planted")
    stream.meta["planted"] = asdict(spec)
    return stream, heavy


def fig7_spec(seed: int = 1, interactions: int = 30_000) -> PlantedStreamSpec:
    """The planted stream of the Fig. 7 check (``tests/test_autoemb.py``,
    ``benchmarks/fig7_autoemb.py``): users arrive over the first 90% of the stream (cold and popular
    users side by side at any time); heavy users' ratings need 4 latent factors; a light user's
    ratings are the item's plus noise of std 1 (its own embedding can only fit the noise, and a
    wider one fits more of it per step)."""
    return PlantedStreamSpec(num_users=300, num_items=200, interactions=interactions, latent_dim=4,
                             arrival=0.9, light_user_bias=0.0, light_noise=1.0, seed=seed)
