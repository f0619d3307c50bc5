"""Scaling in the reservoir size N, qep_jax against its peers, on one spin-GORM realization.

    python benchmarks/scaling_n.py            # quick set (a few minutes on 2 cores)
    python benchmarks/scaling_n.py --large    # adds N = 512, 1024 (diagonalization, cheap set) and 512
    python benchmarks/scaling_n.py --tiny --in-process --out /tmp/b   # smoke run

Routes: ``ours-diag`` (``qep_jax.diagonalize`` alone), ``ours-cheap`` / ``ours-full``
(``qep_jax.evolve`` with ``reservoir_entropies`` False / True), ``ours-grad-cheap`` /
``ours-grad-full`` (``jax.jit(jax.grad(...))`` of ``D_iS(t_final)`` / ``I(s:r)(t_final)`` wrt
lambda), and the peers ``qutip-*``, ``dynamiqs-*``, ``naive-*`` (see ``_routes.py``), including
``qutip-full-conserved`` (QuTiP's full set with ``I = S + S_r - S_tot``). The opt-in variants
``qutip-cheap-eigenbasis``, ``qutip-full-conserved-eigenbasis``, ``naive-cheap-propagator`` and
``naive-full-propagator`` run only when named in ``--routes`` (at N = 200 unless ``--ns``). A peer's
time enters the ratio table only if its numbers agree with qep_jax to ``CHECK_TOL``.

Ensemble routes ``ours-cheap-ensemble`` / ``ours-full-ensemble``: ``SpinGORM.simulate`` of R = 64 /
16 realizations (default batch), timed per realization and checked on realization 0, which uses
the same GOE matrix as the other routes.

Writes ``scaling_n.json`` / ``scaling_n.csv`` (one row per route and N), ``ratios.csv`` (peer run
time / qep_jax run time per N) and ``ensemble_ratios.csv`` (peer run time / qep_jax run time per
realization of an ensemble) into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _routes import ENSEMBLE_REALIZATIONS as ENSEMBLE, OPTIONAL_ROUTES, route_parts  # noqa: E402

OURS = ("ours-diag", "ours-cheap", "ours-full", "ours-grad-cheap", "ours-grad-full")
TINY_REALIZATIONS = 3  # per ensemble route with --tiny
PEERS = ("qutip", "dynamiqs", "naive")
TARGET_N, TARGET_T = 200, 100
# Exponents are fitted over N >= FIT_MIN_N, where the O(N^3) / O(T N^2) terms dominate overheads.
FIT_MIN_N = 64


def sizes(args) -> dict[str, list[int]]:
    if args.tiny:
        out = {r: [8] for r in OURS} | {f"{p}-{s}": [8] for p in PEERS for s in ("cheap", "full")}
        out["qutip-full-conserved"] = [8]
        out |= {route: [8] for route in ENSEMBLE}
        out |= {route: [8] for route in OPTIONAL_ROUTES if args.routes and route in args.routes}
        return out
    quick = [16, 32, 64, 128, 200, 256]
    out = {"ours-diag": quick + [512], "ours-cheap": quick + [512], "ours-full": list(quick),
           "ours-grad-cheap": list(quick), "ours-grad-full": [16, 32, 64, 128, 200]}
    peers = [16, 32, 64, 128, 200]
    if args.large:
        out["ours-diag"] += [1024]
        out["ours-cheap"] += [1024]
        out["ours-full"] += [512]
        out["ours-grad-cheap"] += [512]
        out["ours-grad-full"] += [256]
        peers += [256]
    for p in PEERS:
        for s in ("cheap", "full"):
            out[f"{p}-{s}"] = list(peers)
    # QuTiP's full set a second time with I = S + S_r - S_tot (S_tot conserved), the form the
    # dynamiqs and naive routes use; qutip-full keeps the prescribed entropy_mutual.
    out["qutip-full-conserved"] = list(peers)
    out |= {route: list(peers) for route in ENSEMBLE}
    # Opt-in variants (only when named in --routes): N = 200 unless --ns says otherwise.
    for route in OPTIONAL_ROUTES:
        if args.routes and route in args.routes:
            out[route] = [TARGET_N]
    return out


def _peer_pairs(rows: list[dict], ours_suffix: str):
    """``(peer row, its label, matching qep_jax row)`` per N, the qep_jax row being
    ``ours-<set><ours_suffix>`` at the same N; rows with an error are skipped.

    The label is the route's peer with its variant, if any (``qutip-conserved`` for
    ``qutip-full-conserved``)."""
    # Keyed by T too: merged runs may hold one route at several T, and a peer must meet qep_jax at its own.
    ok = {(r["route"], r["n"], r["t"]): r for r in rows if "error" not in r}
    for (route, n, t), r in sorted(ok.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        peer, which, variant = route_parts(route)
        ours = ok.get((f"ours-{which}{ours_suffix}", n, t))
        if peer in PEERS and ours is not None:
            yield r, f"{peer}-{variant}" if variant else peer, ours


def ratio_rows(rows: list[dict]) -> list[dict]:
    """``peer run_s / ours run_s`` per N and set, only where the peer passed its check."""
    out = []
    for r, peer, ours in _peer_pairs(rows, ""):
        out.append({
            "n": r["n"], "t": r["t"], "set": route_parts(r["route"])[1], "peer": peer,
            "peer_run_s": r["run_s"], "ours_run_s": ours["run_s"],
            "ratio": r["run_s"] / ours["run_s"] if r["check_ok"] else None,
            "ratio_cpu": r["run_cpu_s"] / ours["run_cpu_s"] if r["check_ok"] else None,
            "check_error": r["check_error"], "check_ok": r["check_ok"],
        })
    return out


def ensemble_ratio_rows(rows: list[dict]) -> list[dict]:
    """``peer run_s / (qep_jax ensemble run_s / R)`` per N and set (wall and CPU time), only where
    both passed their checks: a peer's one realization against one of R realizations of
    ``SpinGORM.simulate``."""
    out = []
    for r, peer, ens in _peer_pairs(rows, "-ensemble"):
        good = bool(r["check_ok"] and ens["check_ok"])
        out.append({
            "n": r["n"], "t": r["t"], "set": route_parts(r["route"])[1], "peer": peer,
            "realizations": ens["realizations"], "peer_run_s": r["run_s"],
            "ours_run_per_realization_s": ens["run_per_realization_s"],
            "ratio": r["run_s"] / ens["run_per_realization_s"] if good else None,
            "ratio_cpu": r["run_cpu_s"] / ens["run_cpu_per_realization_s"] if good else None,
            "check_ok": good,
        })
    return out


def exponents(rows: list[dict], n_min: int = FIT_MIN_N) -> dict:
    fits = {}
    for route in sorted({r["route"] for r in rows}):
        pts = sorted((r["n"], r["run_s"]) for r in rows if r["route"] == route and "error" not in r)
        fits[route] = _common.fit_exponent([p[0] for p in pts], [p[1] for p in pts], n_min)
    return fits


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--t", type=int, default=TARGET_T, help="time points (default 100)")
    parser.add_argument("--large", action="store_true", help="also the large N (minutes more)")
    parser.add_argument("--tiny", action="store_true", help="N = 8, T = 5, one repeat (smoke test)")
    parser.add_argument("--routes", nargs="*", help="subset of routes to run")
    parser.add_argument("--ns", nargs="*", type=int, help="one list of N for every route (overrides the sets)")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of repeats per configuration")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of an existing scaling_n.json in --out, replacing re-run (route, N, T)")
    parser.add_argument("--in-process", action="store_true", help="no subprocesses (no memory numbers)")
    parser.add_argument("--out", type=Path, default=_common.RESULTS)
    args = parser.parse_args(argv)

    n_times = 5 if args.tiny else args.t
    configs = []
    for route, ns in sizes(args).items():
        if args.routes and route not in args.routes:
            continue
        ns = args.ns or ns
        if not _common.peer_available(route.split("-")[0]):
            print(f"skipping {route}: {route.split('-')[0]} is not installed")
            continue
        for n in ns:
            config = {"route": route, "n": n, "t": n_times, "budget_s": args.budget}
            if route in ENSEMBLE:
                config["realizations"] = TINY_REALIZATIONS if args.tiny else ENSEMBLE[route]
            if args.tiny:
                config["repeats"] = 1
            configs.append(config)
    rows = _common.run_configs(configs, in_process=args.in_process)
    if args.merge and (args.out / "scaling_n.json").exists():
        import json

        fresh = {(r["route"], r["n"], r["t"]) for r in rows}
        old = json.loads((args.out / "scaling_n.json").read_text())["rows"]
        rows = [r for r in old if (r["route"], r["n"], r["t"]) not in fresh] + rows
    payload = {
        "environment": _common.environment(),
        "settings": {"t": n_times, "t_end": _common.T_END, "delta": _common.DELTA,
                     "coupling": _common.COUPLING, "beta": _common.BETA, "seed": _common.SEED,
                     "check_tol": _common.CHECK_TOL, "fit_min_n": FIT_MIN_N,
                     "argv": sys.argv[1:] if argv is None else list(argv)},
        "rows": rows,
        "exponents": exponents(rows, 8 if args.tiny else FIT_MIN_N),
        "ratios": ratio_rows(rows),
        "ensemble_ratios": ensemble_ratio_rows(rows),
    }
    _common.write_json(args.out / "scaling_n.json", payload)
    _common.write_table(args.out / "scaling_n.csv", rows)
    _common.write_table(args.out / "ratios.csv", payload["ratios"])
    _common.write_table(args.out / "ensemble_ratios.csv", payload["ensemble_ratios"])
    print("exponents (run time ~ N^k, N >= %d):" % (8 if args.tiny else FIT_MIN_N),
          {k: None if v is None else round(v, 2) for k, v in payload["exponents"].items()})
    return payload


if __name__ == "__main__":
    main()
