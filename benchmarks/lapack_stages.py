"""Where one ``2N x 2N`` diagonalization's time goes on the CPU, stage by stage of LAPACK.

    python benchmarks/lapack_stages.py            # n = 400 (N = 200, the issue's target), ~10 s
    python benchmarks/lapack_stages.py --n 800
    python benchmarks/lapack_stages.py --tiny     # smoke run (n = 16)

The cheap set of one realization is bounded below by one real symmetric ``eigh`` with vectors;
this script measures how far below the whole realization that floor is, and whether another
LAPACK route or splitting the work over the cores could lower it. All calls are single-threaded
BLAS (``OPENBLAS_NUM_THREADS=1``, as for every benchmark route; see ``_common.THREAD_ENV``).

Measured on one GOE-like matrix (``(A + A^T) / 2``, ``A`` standard normal), median of
``--repeats`` calls each:

- ``jax.numpy.linalg.eigh`` jitted (what qep_jax runs for one realization; jaxlib calls LAPACK
  ``syevd``) and ``numpy.linalg.eigh`` (the host route of the CPU ensembles);
- SciPy's drivers with vectors: ``evd`` (divide and conquer), ``evr`` (MRRR), ``ev`` (QR);
  and eigenvalues only;
- the stages ``syevd`` and ``syevr`` are made of: ``sytrd`` (Householder tridiagonalization,
  ``A = Q T Q^T``), the eigenvectors ``Z`` of ``T`` by ``stevd`` (divide and conquer) or
  ``stemr`` (MRRR), and the back-transformation ``W = Q Z`` (``ormqr`` on the reflectors below
  the subdiagonal: what ``ormtr`` does for a lower ``sytrd``), with each route's residual
  ``max|A W - W diag(E)|`` and loss of orthogonality ``max|W^T W - 1|``;
- whether the two halves of the back-transformation run concurrently from two Python threads
  (SciPy 1.17's ``ormqr`` wrapper releases the GIL; its ``sytrd`` and ``stevd`` wrappers do not,
  so only the back-transformation could be split over the cores from Python) and whether two
  ``numpy.linalg.eigh`` calls do (NumPy releases the GIL: the ensembles' one-``eigh``-per-core
  route).

Writes ``lapack_stages.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (thread environment first)


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation for the jitted route)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _quality(a, energies, vectors) -> dict:
    import numpy as np

    n = a.shape[0]
    return {
        "residual": float(np.max(np.abs(a @ vectors - vectors * energies))),
        "orthogonality": float(np.max(np.abs(vectors.T @ vectors - np.eye(n)))),
    }


def _in_two_threads(first, second) -> None:
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def measure(n: int, repeats: int, seed: int = 0) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import scipy.linalg
    from scipy.linalg import lapack

    _common.enable_x64()
    a = np.random.default_rng(seed).normal(size=(n, n))
    a = np.asfortranarray((a + a.T) / 2)
    out: dict = {"n": n, "repeats": repeats, "ms": {}, "quality": {}}
    ms, quality = out["ms"], out["quality"]

    jitted = jax.jit(jnp.linalg.eigh)
    a_jax = jnp.asarray(a)
    ms["jax_eigh_jit"] = _median_ms(lambda: jax.block_until_ready(jitted(a_jax)), repeats)
    ms["numpy_eigh"] = _median_ms(lambda: np.linalg.eigh(a), repeats)
    for driver in ("evd", "evr", "ev"):
        ms[f"scipy_eigh_{driver}"] = _median_ms(
            lambda driver=driver: scipy.linalg.eigh(a, driver=driver, check_finite=False), repeats)
        quality[f"scipy_eigh_{driver}"] = _quality(a, *scipy.linalg.eigh(a, driver=driver, check_finite=False))
    ms["scipy_eigvalsh_evd"] = _median_ms(
        lambda: scipy.linalg.eigh(a, eigvals_only=True, driver="evd", check_finite=False), repeats)

    # Stages. sytrd (lower): A = Q T Q^T, the reflectors below the subdiagonal of its output.
    lwork = int(lapack.dsytrd_lwork(n, lower=1)[0])
    ms["sytrd"] = _median_ms(lambda: lapack.dsytrd(a, lower=1, lwork=lwork), repeats)
    reflected, diag, offdiag, tau, info = lapack.dsytrd(a, lower=1, lwork=lwork)
    if info:
        raise RuntimeError(f"dsytrd failed (info = {info})")
    offdiag_n = np.concatenate([offdiag, [0.0]])  # stemr's E has length n (the last entry is work space)

    ms["stevd_vectors"] = _median_ms(lambda: lapack.dstevd(diag, offdiag, compute_v=1), repeats)
    e_dc, z_dc, info = lapack.dstevd(diag, offdiag, compute_v=1)
    if info:
        raise RuntimeError(f"dstevd failed (info = {info})")
    # stemr overwrites E: a fresh copy per call. range 0 = all eigenvalues.
    ms["stemr_vectors"] = _median_ms(lambda: lapack.dstemr(diag.copy(), offdiag_n.copy(), 0, 0.0, 0.0, 1, n),
                                     repeats)
    m, e_mr, z_mr, info = lapack.dstemr(diag.copy(), offdiag_n.copy(), 0, 0.0, 0.0, 1, n)
    if info or m != n:
        raise RuntimeError(f"dstemr failed (info = {info}, {m} of {n} eigenvalues)")

    def back_transform(z):
        """``W = Q Z``: Q acts on rows 2..n (ormtr for uplo = 'L' is this ormqr)."""
        w = np.array(z, order="F")
        if n > 1:
            w[1:], _, info = lapack.dormqr("L", "N", reflected[1:, :-1], tau, w[1:],
                                           lwork=max(1, 64 * w.shape[1]))
            if info:
                raise RuntimeError(f"dormqr failed (info = {info})")
        return w

    ms["back_transform"] = _median_ms(lambda: back_transform(z_dc), repeats)
    quality["sytrd_stevd_back_transform"] = _quality(a, e_dc, back_transform(z_dc))
    quality["sytrd_stemr_back_transform"] = _quality(a, e_mr[:n], back_transform(z_mr[:, :n]))

    half = n // 2
    ms["back_transform_halves_serial"] = _median_ms(
        lambda: (back_transform(z_dc[:, :half]), back_transform(z_dc[:, half:])), repeats)
    ms["back_transform_halves_two_threads"] = _median_ms(
        lambda: _in_two_threads(lambda: back_transform(z_dc[:, :half]), lambda: back_transform(z_dc[:, half:])),
        repeats)
    b = np.array(a[::-1, ::-1])
    ms["numpy_eigh_two_serial"] = _median_ms(lambda: (np.linalg.eigh(a), np.linalg.eigh(b)), repeats)
    ms["numpy_eigh_two_threads"] = _median_ms(
        lambda: _in_two_threads(lambda: np.linalg.eigh(a), lambda: np.linalg.eigh(b)), repeats)
    ms["sytrd_plus_stevd_plus_back_transform"] = ms["sytrd"] + ms["stevd_vectors"] + ms["back_transform"]
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="matrix size (D = 2N)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--tiny", action="store_true", help="n = 16, 3 repeats")
    parser.add_argument("--out", type=Path, default=_common.RESULTS)
    args = parser.parse_args(argv)
    n, repeats = (16, 3) if args.tiny else (args.n, args.repeats)
    if n < 2 or repeats < 1:
        parser.error("--n must be >= 2 and --repeats >= 1")
    payload = {"environment": _common.environment(), **measure(n, repeats)}
    for name, value in payload["ms"].items():
        print(f"{name:>38}  {value:9.3f} ms")
    for name, value in payload["quality"].items():
        print(f"{name:>38}  residual {value['residual']:.1e}  orthogonality {value['orthogonality']:.1e}")
    args.out.mkdir(parents=True, exist_ok=True)
    _common.write_json(args.out / "lapack_stages.json", payload)
    return payload


if __name__ == "__main__":
    main()
