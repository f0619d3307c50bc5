"""Regenerate every benchmark table, plot and the numbers in ``benchmarks/README.md``.

    python benchmarks/run_all.py            # quick set
    python benchmarks/run_all.py --large    # adds the large N (much longer)

Runs ``scaling_n.py``, ``scaling_batch.py`` and ``report.py`` with their defaults, each
configuration in a fresh single-threaded subprocess, and prints the total wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402,F401  (thread environment first)
import report  # noqa: E402
import scaling_batch  # noqa: E402
import scaling_n  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--out", type=Path, default=_common.RESULTS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    scaling_n.main((["--large"] if args.large else []) + ["--out", str(args.out)])
    scaling_batch.main(["--out", str(args.out)])
    # README.md is only rewritten for the default results folder (its links point there).
    readme = _common.HERE / "README.md" if args.out.resolve() == _common.RESULTS.resolve() else args.out / "README.md"
    report.main(["--results", str(args.out), "--readme", str(readme)])
    print(f"run_all finished in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
