"""Where the time of one run goes, per XLA operation (``jax.profiler`` trace of the compiled run).

    python benchmarks/profile_ops.py                      # SpinGORM.simulate, N = 200, T = 100, R = 64
    python benchmarks/profile_ops.py --single             # qep_jax.evolve of one realization
    python benchmarks/profile_ops.py --full --realizations 16
    python benchmarks/profile_ops.py --tiny --out /tmp/b  # smoke run

Traces ``--calls`` runs after two untraced ones (compilation excluded) and sums the duration of
every XLA operation (fusions, dots, the host callbacks of the batched CPU ``eigh``) and of the
host threads' NumPy ``eigh`` / ``eigvalsh`` calls, per realization. XLA may run independent operations at the same time
and tracing adds its own cost, so the sum can exceed the untraced run time (printed first): the
sums rank the operations rather than add up to it. The host ``eigh`` calls run one per core at a
time, inside the ``pure_callback`` operation that waits for them (the full set's reservoir
entropies make one such callback per time chunk, for the eigenvalues of the reduced states). Operation names are XLA's (``ynn_fusion`` = a dot, ``pure_callback``
= the host ``eigh``); ``--hlo DIR`` dumps the optimized HLO to map a name to its shapes.

Writes ``profile_ops.json`` (the sums, the run time, the environment) into ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (thread environment first)

# Trace events that are containers of the operations, not operations.
_CONTAINERS = ("ThunkExecutor", "PjitFunction", "CommonPjRt", "SlinkyThreadPool", "H2D", "D2H",
               "shard_args", "DevicePut", "while")


def _events(trace_dir: Path) -> list[dict]:
    files = sorted(trace_dir.rglob("*.trace.json.gz"))
    if not files:
        raise SystemExit(f"no trace written under {trace_dir}")
    with gzip.open(files[-1]) as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def summarize(events: list[dict], per: int) -> dict:
    """``{"xla_ops_ms": {name: ms per realization}, "xla_ops_total_ms", "host_lapack_ms"}`` from trace events."""
    ops: dict[str, float] = collections.defaultdict(float)
    host_lapack = 0.0
    for e in events:
        name = e["name"]
        if name.startswith("$"):  # Python frames (the profiler's Python tracer)
            if name.endswith((" eigh", " eigvalsh")) and "_linalg.py" in name:  # NumPy's, in the host threads
                host_lapack += e["dur"]
            continue
        if name.startswith(_CONTAINERS):
            continue
        ops[name] += e["dur"]
    scale = 1e-3 / per  # microseconds -> ms per realization
    ranked = sorted(ops.items(), key=lambda kv: -kv[1])
    return {"xla_ops_ms": {k: v * scale for k, v in ranked},
            "xla_ops_total_ms": sum(ops.values()) * scale,
            "host_lapack_ms": host_lapack * scale}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--t", type=int, default=100)
    parser.add_argument("--realizations", type=int, default=64)
    parser.add_argument("--single", action="store_true", help="qep_jax.evolve of one realization instead")
    parser.add_argument("--full", action="store_true", help="with the reservoir entropies")
    parser.add_argument("--calls", type=int, default=3, help="traced calls")
    parser.add_argument("--top", type=int, default=25, help="operations printed")
    parser.add_argument("--tiny", action="store_true", help="N = 8, T = 5, R = 4, one traced call")
    parser.add_argument("--hlo", type=Path, help="also dump the optimized HLO into this folder")
    parser.add_argument("--out", type=Path, default=_common.RESULTS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.n, args.t, args.realizations, args.calls = 8, 5, 4, 1
    if args.hlo:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={args.hlo}"
                                   " --xla_dump_hlo_as_text").strip()

    import jax
    import jax.numpy as jnp

    import qep_jax

    model, x, times = _common.problem(args.n, args.t)
    t = jnp.asarray(times)
    if args.single:
        system = model.open_system(jnp.asarray(x))
        per = 1

        def run():
            return qep_jax.evolve(system, t, reservoir_entropies=args.full)
    else:
        key = jax.random.key(_common.SEED)
        per = args.realizations

        def run():
            return model.simulate(key, t, args.realizations, reservoir_entropies=args.full)

    for _ in range(2):  # compile, then one warm call
        jax.block_until_ready(run())
    start = time.perf_counter()
    for _ in range(args.calls):
        jax.block_until_ready(run())
    untraced_ms = (time.perf_counter() - start) / args.calls / per * 1e3
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(args.calls):
                jax.block_until_ready(run())
        summary = summarize(_events(Path(tmp)), per * args.calls)
    what = "evolve, one realization" if args.single else f"SpinGORM.simulate, R = {args.realizations}"
    print(f"{what}, N = {args.n}, T = {args.t}, {'full' if args.full else 'cheap'} set: "
          f"{untraced_ms:.3f} ms per realization untraced; XLA operations {summary['xla_ops_total_ms']:.3f} ms, "
          f"host LAPACK calls {summary['host_lapack_ms']:.3f} ms (on all host threads together)")
    for name, ms in list(summary["xla_ops_ms"].items())[:args.top]:
        print(f"  {ms:9.3f} ms  {name}")
    record = {"environment": _common.environment(),
              "settings": {"n": args.n, "t": args.t, "realizations": per, "single": args.single,
                           "full": args.full, "calls": args.calls, "argv": sys.argv[1:] if argv is None else argv},
              "run_ms_per_realization": untraced_ms, **summary}
    _common.write_json(args.out / "profile_ops.json", record)
    return record


if __name__ == "__main__":
    main()
