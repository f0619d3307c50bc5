"""Small helpers shared by the experiment scripts (float64, statistics, output files)."""

from __future__ import annotations

import json
import os
import pathlib

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def mean_and_se(samples, axis=0):
    """Mean and standard error of the mean along ``axis`` (ddof = 1)."""
    x = np.asarray(samples)
    n = x.shape[axis]
    return x.mean(axis), x.std(axis, ddof=1) / np.sqrt(n)


def band(ax, t, samples, label, color=None, **kw):
    """Plot the mean with a +-1 standard-error band; returns (mean, se)."""
    m, s = mean_and_se(samples)
    (line,) = ax.plot(t, m, label=label, color=color, **kw)
    ax.fill_between(t, m - s, m + s, color=line.get_color(), alpha=0.3, linewidth=0)
    return m, s


def save(name: str, fig, data: dict, summary: dict, out_dir=None) -> pathlib.Path:
    """Write ``name.png``, ``name.npz`` (arrays) and ``name.json`` (summary numbers, parameters)."""
    out = pathlib.Path(out_dir) if out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    np.savez_compressed(out / f"{name}.npz", **{k: np.asarray(v) for k, v in data.items()})
    with open(out / f"{name}.json", "w") as f:
        json.dump(summary, f, indent=2, default=float)
    print(json.dumps(summary, indent=2, default=float))
    return out
