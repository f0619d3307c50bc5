"""Compare every results/<name>.json with the version committed at a git revision, key by key.

For each numeric leaf present in both (same path; lists of equal length), the absolute difference
|new - old| and the relative difference |new - old| / max(|new|, |old|) are formed. Skipped: the
``parameters`` subtree and run times (any key containing "second", "runtime" or "wall"). Leaves with
max(|new|, |old|) < ``--near-zero`` are reported by their absolute difference only. Keys present on one
side only are counted and listed. Writes results/regeneration_check.json.

Run (from experiments/): python compare_with_previous.py [--rev HEAD]  (before committing new results)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess

HERE = pathlib.Path(__file__).resolve().parent
NAMES = ["fig1_single_realizations", "large_reservoir_limit", "where_entropy_lives", "negativity_eq25",
         "two_reservoirs", "driven_reset", "parameter_inference"]
TIMING = ("second", "runtime", "wall")
CHECK_WORDS = ("max_abs", "residual", "error", "minus_exact", "min_heat_minus")


def leaves(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            if path == "" and k == "parameters":
                continue
            if any(word in k for word in TIMING):
                continue
            yield from leaves(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, f"{path}[{i}]")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield path, float(x)
    else:
        yield path, x


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--near-zero", type=float, default=1e-8)
    args = ap.parse_args()
    report = {"rev": subprocess.check_output(["git", "-C", str(HERE), "rev-parse", args.rev], text=True).strip(),
              "near_zero": args.near_zero, "files": {}}
    for name in NAMES:
        old_text = subprocess.check_output(["git", "-C", str(HERE), "show", f"{args.rev}:experiments/results/{name}.json"],
                                           text=True)
        old = dict(leaves(json.loads(old_text)))
        new = dict(leaves(json.loads((HERE / "results" / f"{name}.json").read_text())))
        rel, absz, texts_changed = [], [], []
        for k in old.keys() & new.keys():
            a, b = old[k], new[k]
            if isinstance(a, float) and isinstance(b, float):
                scale = max(abs(a), abs(b))
                d = abs(a - b)
                (rel if scale >= args.near_zero else absz).append((d / scale if scale >= args.near_zero else d, k, a, b))
            elif a != b:
                texts_changed.append(k)
        rel.sort(reverse=True)
        absz.sort(reverse=True)
        # Check values (|a - b| of nearly equal quantities, residuals, errors) are rounding-dominated
        # differences: their relative change says little, so the maximum is also given without them.
        plain = [x for x in rel if not any(w in x[1] for w in CHECK_WORDS)]
        checks = [x for x in rel + absz if any(w in x[1] for w in CHECK_WORDS)]
        entry = {"shared_numeric_keys": len(rel) + len(absz),
                 "max_relative_difference": rel[0][0] if rel else 0.0,
                 "max_relative_difference_excluding_checks": plain[0][0] if plain else 0.0,
                 "largest_relative_excluding_checks": [{"key": k, "old": a, "new": b, "relative": d}
                                                       for d, k, a, b in plain[:2]],
                 "max_absolute_difference_of_checks": max((abs(a - b) for _, _, a, b in checks), default=0.0),
                 "largest_relative": [{"key": k, "old": a, "new": b, "relative": d} for d, k, a, b in rel[:3]],
                 "near_zero_keys": len(absz),
                 "max_absolute_difference_near_zero": absz[0][0] if absz else 0.0,
                 "largest_near_zero": [{"key": k, "old": a, "new": b} for d, k, a, b in absz[:2]],
                 "changed_non_numeric": sorted(texts_changed),
                 "only_in_old": sorted(old.keys() - new.keys())[:20],
                 "only_in_new_count": len(new.keys() - old.keys())}
        report["files"][name] = entry
        top = rel[0] if rel else (0.0, "-", None, None)
        print(f"{name}: {entry['shared_numeric_keys']} shared numeric keys, max relative difference {entry['max_relative_difference']:.2e} "
              f"({top[1]}); without check values {entry['max_relative_difference_excluding_checks']:.2e}, "
              f"check values max |diff| {entry['max_absolute_difference_of_checks']:.1e}; near zero ({len(absz)} keys) max |diff| {entry['max_absolute_difference_near_zero']:.1e}; "
              f"only in old: {len(old.keys() - new.keys())}, only in new: {entry['only_in_new_count']}, "
              f"non-numeric changed: {len(texts_changed)}")
    (HERE / "results" / "regeneration_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
