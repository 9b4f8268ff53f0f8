"""The generalised Fiedler vector of a dense affinity graph, for the normalized cut.

The normalized cut needs one eigenvector: y of (D - A) y = lambda D y for the second-smallest
lambda, i.e. y = D^-1/2 v with v the eigenvector of the second-largest eigenvalue of
M = D^-1/2 A D^-1/2 (M has the trivial eigenpair (1, u), u = sqrt(d) / ||sqrt(d)||).

Two roads to the same vector:

* **dense**: the two smallest eigenpairs of the symmetric normalized Laplacian I - M. On the
  CPU, LAPACK ``syevr`` through scipy (``subset_by_index=[0, 1]``); elsewhere, or when scipy
  fails, ``torch.linalg.eigh`` (the full decomposition, which is what DiffCut runs,
  `recursive_normalized_cut.py` l.25-33). O(n^3).
* **lanczos**: the largest eigenpair of the deflated M' = M - u u^T, matrix-free (one
  affinity-vector product per iteration, no n x n temporary), from a fixed start vector so
  repeated runs give the same bits. On the CPU it is ARPACK (``scipy.sparse.linalg.eigsh``,
  k = 1, which = "LA"); on other devices it is a Lanczos iteration in torch with full
  re-orthogonalisation and explicit restarts, so a GPU never copies the affinity to the host.

``auto`` takes Lanczos above `LANCZOS_MIN_NODES` nodes and the dense solver below, where
it is faster (measured crossover about 200 nodes: `../shared/reference/mmdit_and_fast_ncut.md`
C.3). A Lanczos solve that does not converge, or gives a non-finite vector, falls back to the
dense solver, with one debug log line each time.

The two roads give the same vector up to the eigensolvers' tolerance. DiffCut's affinities
(alpha = 10) have nearly degenerate spectra, one near-1 eigenvalue of M per cluster, so the
vector itself is ill-determined (the reference's float32 ``eigh`` is off by 0.1 in norm); the
cuts the recursion accepts were identical on every case of ``benchmarks/bench_ncut.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

__all__ = ["EIGENSOLVERS", "LANCZOS_MIN_NODES", "check_eigensolver", "fiedler_vector", "lanczos_top"]

logger = logging.getLogger(__name__)

EIGENSOLVERS = ("auto", "dense", "lanczos")
# Below this many nodes the dense solver wins (n = 128: dense 1.4 ms, Lanczos 1.6 ms; n = 256:
# 2.9 ms against 1.7 ms; 1 thread, reference note C.3).
LANCZOS_MIN_NODES = 193
# ARPACK's relative tolerance on the Ritz value (reference note C.3: 1e-6, float32).
_TOL = 1e-6
# Torch Lanczos: Krylov dimension per restart, and restarts before the dense fallback.
_KRYLOV = 32
_RESTARTS = 30


def check_eigensolver(eigensolver: str) -> None:
    """Raise ValueError unless `eigensolver` is one of `EIGENSOLVERS`."""
    if eigensolver not in EIGENSOLVERS:
        raise ValueError(f"`eigensolver` must be one of {EIGENSOLVERS}, got {eigensolver!r}.")


def fiedler_vector(affinity: torch.Tensor, degree: torch.Tensor, eigensolver: str = "auto") -> torch.Tensor | None:
    """Generalised Fiedler vector of a graph, with DiffCut's sign rule.

    Args:
        affinity: symmetric non-negative float tensor (n, n), n >= 2, any device.
        degree: its row sums (n,), all > 0.
        eigensolver: "auto", "dense" or "lanczos" (module docstring).

    Returns:
        float tensor (n,) on the affinity's device and dtype, scaled so its entry of largest
        magnitude is positive (reference l.64-68); None when every solver failed or the
        vector is not finite (the caller ends the branch).
    """
    check_eigensolver(eigensolver)
    n = affinity.shape[0]
    d_inv_sqrt = degree.rsqrt()  # (n,)
    vector = None
    if eigensolver == "lanczos" or (eigensolver == "auto" and n >= LANCZOS_MIN_NODES):
        vector = _lanczos(affinity, degree, d_inv_sqrt)
    if vector is None:
        vector = _dense(affinity, degree, d_inv_sqrt)
    if vector is None:
        return None
    y = d_inv_sqrt * vector  # (n,) back to the generalised problem
    if not bool(torch.isfinite(y).all()):
        logger.warning("normalized cut: non-finite Fiedler vector on %d tokens; branch ends.", n)
        return None
    return y * torch.sign(y[torch.argmax(y.abs())])


def _dense(affinity: torch.Tensor, degree: torch.Tensor, d_inv_sqrt: torch.Tensor) -> torch.Tensor | None:
    """Second eigenvector of D^-1/2 (D - A) D^-1/2 by a direct solver; None on failure."""
    laplacian = torch.diag(degree) - affinity  # (n, n)
    sym = d_inv_sqrt[:, None] * laplacian * d_inv_sqrt[None, :]
    try:
        if sym.device.type == "cpu" and sym.dtype in (torch.float32, torch.float64):
            try:
                from scipy.linalg import eigh as scipy_eigh

                _, vectors = scipy_eigh(sym.numpy(), subset_by_index=[0, 1], driver="evr", check_finite=False)
                return torch.from_numpy(vectors[:, 1].copy()).to(sym.dtype)
            except (np.linalg.LinAlgError, ValueError) as err:
                logger.debug("normalized cut: scipy eigh failed (%s); trying torch.", err)
        _, vectors = torch.linalg.eigh(sym)
        return vectors[:, 1]
    except (RuntimeError, np.linalg.LinAlgError) as err:  # torch LinAlgError is a RuntimeError
        logger.warning("normalized cut: eigensolver failed on %d tokens (%s); branch ends.", affinity.shape[0], err)
        return None


def _start_vector(n: int, trivial: torch.Tensor) -> torch.Tensor:
    """The fixed Lanczos start: a seeded Gaussian (n,) projected off the trivial vector."""
    v0 = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v0 = v0.to(device=trivial.device, dtype=trivial.dtype)
    return v0 - trivial * (trivial @ v0)


def _lanczos(affinity: torch.Tensor, degree: torch.Tensor, d_inv_sqrt: torch.Tensor) -> torch.Tensor | None:
    """Top eigenvector of the deflated M' (n,), or None when the solve did not converge."""
    n = affinity.shape[0]
    trivial = degree.sqrt()
    trivial = trivial / torch.linalg.vector_norm(trivial)  # u, the eigenvector of M for 1
    v0 = _start_vector(n, trivial)
    if affinity.device.type == "cpu" and affinity.dtype in (torch.float32, torch.float64):
        vector = _arpack(affinity, d_inv_sqrt, trivial, v0)
    else:
        vector = lanczos_top(lambda x: d_inv_sqrt * (affinity @ (d_inv_sqrt * x)) - trivial * (trivial @ x), v0)
    if vector is None or not bool(torch.isfinite(vector).all()):
        logger.debug("normalized cut: Lanczos did not converge on %d tokens; dense fallback.", n)
        return None
    return vector


def _arpack(
    affinity: torch.Tensor, d_inv_sqrt: torch.Tensor, trivial: torch.Tensor, v0: torch.Tensor
) -> torch.Tensor | None:
    """ARPACK implicitly restarted Lanczos on the CPU (affinity shared with numpy, not copied)."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

    a, s, u = affinity.numpy(), d_inv_sqrt.numpy(), trivial.numpy()
    n = a.shape[0]

    def matvec(x: np.ndarray) -> np.ndarray:
        x = x.reshape(-1)
        return s * (a @ (s * x)) - u * (u @ x)

    operator = LinearOperator((n, n), matvec=matvec, dtype=a.dtype)
    try:
        _, vectors = eigsh(operator, k=1, which="LA", tol=_TOL, v0=v0.numpy())
    except (ArpackNoConvergence, ArpackError) as err:
        logger.debug("normalized cut: ARPACK failed on %d tokens (%s).", n, err)
        return None
    return torch.from_numpy(np.ascontiguousarray(vectors[:, 0])).to(affinity.dtype)


def lanczos_top(
    matvec, v0: torch.Tensor, *, krylov: int = _KRYLOV, restarts: int = _RESTARTS, tol: float = _TOL
) -> torch.Tensor | None:
    """Eigenvector of the largest eigenvalue of a symmetric operator, by restarted Lanczos.

    Each cycle builds a Krylov basis of `krylov` vectors with full re-orthogonalisation (two
    Gram-Schmidt passes, stable in float32), takes the top Ritz pair of the tridiagonal
    matrix and restarts from its Ritz vector; it stops when the residual
    ||M v - theta v|| = |beta_m s_m| is at most `tol` * max(1, |theta|) (ARPACK's test).
    Everything stays on `v0`'s device; the tridiagonal eigenproblem (krylov x krylov) is
    solved in float64 on the CPU.

    Args:
        matvec: x (n,) -> M x (n,), M symmetric, same device and dtype as `v0`.
        v0: start vector (n,), not zero.
        krylov, restarts, tol: cycle length, number of cycles, relative residual tolerance.

    Returns:
        unit vector (n,), or None when it did not converge within `restarts` cycles.
    """
    n = v0.shape[0]
    m = min(krylov, n)
    v = v0 / torch.linalg.vector_norm(v0)
    for _ in range(restarts):
        basis = torch.zeros((m, n), dtype=v.dtype, device=v.device)
        alphas, betas = [], []
        basis[0] = v
        beta = 0.0
        for j in range(m):
            w = matvec(basis[j])
            alphas.append(float(basis[j] @ w))
            for _pass in range(2):  # full re-orthogonalisation, twice
                w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
            beta = float(torch.linalg.vector_norm(w))
            if j + 1 == m or beta <= tol:
                break
            betas.append(beta)
            basis[j + 1] = w / beta
        k = len(alphas)
        tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if k > 1:
            off = torch.tensor(betas[: k - 1], dtype=torch.float64)
            tri += torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(tri)
        theta, s = float(values[-1]), vectors[:, -1]
        v = s.to(device=v.device, dtype=v.dtype) @ basis[:k]
        v = v / torch.linalg.vector_norm(v)
        if abs(beta * float(s[-1])) <= tol * max(1.0, abs(theta)):
            return v
    return None
