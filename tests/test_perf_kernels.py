"""The tuned CPU kernels (BLAS tiles, branch-free arccos, compiled reductions) against their
references: the fused scalar kernels they replace and plain numpy.

Sizes are chosen to cross the tile boundaries of the tuned kernels (several row blocks and
several source tiles, with partial last tiles), and stay small enough to run in milliseconds.
"""
import numpy as np
import pytest

from meanfield import kernels


def _cloud(rng, n, d, dtype):
    """n particles with a zero row, a row equal to another's a and one opposite to it."""
    W = rng.standard_normal((n, d + 2))
    W[0, :d] = 0.0
    W[2, :d] = W[5, :d]
    W[3, :d] = -W[6, :d]
    return W.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_acos_branchless_matches_numpy(dtype):
    """acos_branchless is np.arccos to a few ulp on [-1, 1], both branches and both signs."""
    x = np.concatenate([np.linspace(-1, 1, 4001), [-1.0, -0.5, 0.0, 0.5, 1.0],
                        1 - np.geomspace(1e-16, 1e-1, 50), -1 + np.geomspace(1e-16, 1e-1, 50)])
    x = x.astype(dtype)
    ours = np.array([kernels.acos_branchless(v) for v in x])
    ref = np.arccos(x.astype(np.float64))
    ulp = np.finfo(dtype).eps
    # relative error where acos is away from 0; absolute near x = 1 (acos -> 0)
    err = np.abs(ours.astype(np.float64) - ref) / np.maximum(ref, 1e-3)
    assert err.max() < 4 * ulp, err.max()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("act", ["relu", "erf", "linear"])
def test_tiled_closed_form_matches_fused_reference(act, dtype):
    """closed_form_pair_field (BLAS tiles) equals fused_closed_form_pair_field, its reference,
    over several row blocks and source tiles (n = 70 points, m = 300 sources, d = 3)."""
    rng = np.random.default_rng(7)
    points = _cloud(rng, 70, 3, dtype)
    sources = _cloud(rng, 300, 3, dtype)
    code = kernels.ACTIVATION_CODES[act]
    K, G = np.full(70, np.nan, dtype), np.full((70, 4), np.nan, dtype)
    K_ref, G_ref = np.empty_like(K), np.empty_like(G)
    kernels.closed_form_pair_field(points, sources, code, K, G)
    kernels.fused_closed_form_pair_field(points, sources, code, K_ref, G_ref)
    rtol = 1e-13 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(K, K_ref, rtol=0, atol=rtol * np.abs(K_ref).max())
    np.testing.assert_allclose(G, G_ref, rtol=0, atol=rtol * np.abs(G_ref).max())
    if act == "relu":
        assert np.all(G[0, :3] == 0)  # a_i = 0: no gradient, as in the reference


def test_tiled_closed_form_matches_numpy_arccos_kernel():
    """The relu pair sums equal a plain numpy arc-cosine kernel with np.arccos (float64)."""
    rng = np.random.default_rng(8)
    P = rng.standard_normal((40, 5))
    S = rng.standard_normal((270, 5))
    d = 3
    A, B, c = P[:, :d], S[:, :d], S[:, d + 1]
    na, nb = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
    cos = np.clip(A @ B.T / np.outer(na, nb), -1, 1)
    theta = np.arccos(cos)
    sin = np.sqrt(1 - cos**2)
    K_ref = (np.outer(na, nb) * (sin + (np.pi - theta) * cos) / (2 * np.pi)) @ c
    G_ref = ((np.pi - theta) / (2 * np.pi) * c) @ B + ((sin * nb / (2 * np.pi)) @ c / na)[:, None] * A
    K, G = np.empty(40), np.empty((40, d + 1))
    kernels.closed_form_pair_field(P, S, kernels.ACTIVATION_CODES["relu"], K, G)
    np.testing.assert_allclose(K, K_ref, rtol=1e-12)
    np.testing.assert_allclose(G[:, :d], G_ref, rtol=1e-11, atol=1e-13)
