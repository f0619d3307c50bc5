"""Smoke runs of the benchmark scripts at tiny size (N = 8, T = 5), in this process.

They check that each script runs end to end, that every peer that is installed agrees with
qep_jax (the agreement check is what lets a peer's time count), and that the outputs (JSON, CSV,
PNG, README block) are written. Timings are not checked. All runs share N = 8, T = 5 so the jit
caches are reused across tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def _installed(module):
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


def test_scaling_n_tiny(out):
    routes = ["ours-diag", "ours-cheap", "naive-cheap"]
    routes += ["qutip-cheap"] if _installed("qutip") else []
    payload = _script("scaling_n").main(["--tiny", "--in-process", "--out", str(out), "--routes", *routes])
    rows = {r["route"]: r for r in payload["rows"]}
    assert set(rows) == set(routes)
    for r in rows.values():
        assert "error" not in r, r
        assert r["run_s"] > 0 and r["first_s"] > 0
    for route in routes:
        if route != "ours-cheap":  # ours-cheap is the reference the peers are checked against
            assert rows[route]["check_ok"], rows[route]
    ratio_peers = {r["peer"] for r in payload["ratios"]}
    assert ratio_peers == {route.split("-")[0] for route in routes if not route.startswith("ours")}
    assert all(r["ratio"] > 0 for r in payload["ratios"])
    assert json.loads((out / "scaling_n.json").read_text())["rows"]
    assert (out / "ratios.csv").read_text().startswith("n,")


def test_ensemble_routes_tiny(tmp_path):
    """SpinGORM.simulate timed per realization: realization 0 checked (with I(s:r) for the full set),
    ratios against the one-realization peers in their own table, not in the per-route ratios."""
    routes = ["ours-cheap-ensemble", "ours-full-ensemble", "naive-cheap"]
    payload = _script("scaling_n").main(["--tiny", "--in-process", "--out", str(tmp_path), "--routes", *routes])
    rows = {r["route"]: r for r in payload["rows"]}
    for route in routes[:2]:
        r = rows[route]
        assert "error" not in r and r["check_ok"] and r["realizations"] == 3, r
        assert r["run_per_realization_s"] == r["run_s"] / 3
    assert "mutual_information" in rows["ours-full-ensemble"]["check_what"]
    assert "mutual_information" not in rows["ours-cheap-ensemble"]["check_what"]
    assert payload["ratios"] == []  # no ours-cheap row to compare with
    (ratio,) = payload["ensemble_ratios"]
    assert (ratio["set"], ratio["peer"], ratio["realizations"]) == ("cheap", "naive", 3) and ratio["ratio"] > 0
    assert (tmp_path / "ensemble_ratios.csv").read_text().startswith("n,")


def _tiny_peer(tmp_path, package, ours, route):
    """``(payload, row of route)`` of a tiny in-process sweep of ``ours`` and one peer route."""
    if not _installed(package):
        pytest.skip(f"{package} is not installed (pip install -e '.[bench]')")
    payload = _script("scaling_n").main(["--tiny", "--in-process", "--out", str(tmp_path),
                                         "--routes", ours, route])
    return payload, next(r for r in payload["rows"] if r["route"] == route)


def test_dynamiqs_peer_tiny(tmp_path):
    _, peer = _tiny_peer(tmp_path, "dynamiqs", "ours-full", "dynamiqs-full")  # batched sesolve of N states
    assert peer["check_ok"] and peer["check_error"] < 1e-8 and "mutual_information" in peer["check_what"]


def test_agreement_check_fails_on_nan_and_ratios_pair_equal_t():
    """A NaN in any series fails the check (Python's max skipped it unless it came first); a peer is
    divided by qep_jax's time at its own T when merged runs hold several."""
    import math

    import numpy as np

    worker = _script("_worker")
    assert worker._deviation(np.array([1.0, np.nan]), np.ones(2)) == math.inf
    assert worker._deviation(np.array([1.0, 2.0]), np.ones(2)) == 1.0
    row = dict(check_ok=True, check_error=0.0, run_cpu_s=1.0)
    rows = [dict(row, route="qutip-cheap", n=200, t=100, run_s=2.9),
            dict(row, route="ours-cheap", n=200, t=1000, run_s=0.05),
            dict(row, route="ours-cheap", n=200, t=100, run_s=0.0168)]
    (ratio,) = _script("scaling_n").ratio_rows(rows)
    assert ratio["t"] == 100 and abs(ratio["ratio"] - 2.9 / 0.0168) < 1e-9


def test_qutip_conserved_route_tiny(tmp_path):
    """The second QuTiP full-set route (I = S + S_r - S_tot) is checked and gets its own ratio row."""
    payload, peer = _tiny_peer(tmp_path, "qutip", "ours-full", "qutip-full-conserved")
    assert peer["check_ok"] and "mutual_information" in peer["check_what"]
    assert [(r["set"], r["peer"]) for r in payload["ratios"]] == [("full", "qutip-conserved")]


def test_scaling_batch_and_report_tiny(out):
    result = _script("scaling_batch").main(["--tiny", "--in-process", "--out", str(out)])
    assert all("error" not in r for r in result["realizations"] + result["times"] + result["batch_size"])
    assert all(r["check_ok"] for r in result["realizations"] + result["batch_size"])
    assert {r.get("batch_size") for r in result["batch_size"]} == {1, 2, None}
    runner = [r for r in result["runner"] if r["route"] == "ours-ensemble"]
    assert runner and all("error" not in r and r["check_ok"] and r["chunk_size_used"] >= 1 for r in runner)
    readme = out / "README.md"
    readme.write_text("intro\n<!-- results:begin (generated by report.py) -->\nold\n<!-- results:end -->\ntail\n")
    _script("report").main(["--results", str(out), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("tail\n") and "old" not in text
    assert "Fitted cost exponents" in text and "Realizations" in text and "Realizations per batch" in text
    assert "Ensemble runner" in text
    assert (out / "scaling_n.png").stat().st_size > 0 and (out / "scaling_batch.png").stat().st_size > 0


def test_profile_ops_tiny(tmp_path):
    record = _script("profile_ops").main(["--tiny", "--out", str(tmp_path)])
    ops = record["xla_ops_ms"]
    assert record["run_ms_per_realization"] > 0 and ops and all(v >= 0 for v in ops.values())
    assert abs(sum(ops.values()) - record["xla_ops_total_ms"]) < 1e-9
    assert any(name.startswith("pure_callback") for name in ops)  # the batched host eigh
    assert json.loads((tmp_path / "profile_ops.json").read_text())["settings"]["realizations"] == 4


def test_gpu_bench_dry_run(tmp_path):
    gpu = _script("gpu_bench")
    record = gpu.main(["--dry-run", "--out", str(tmp_path)])
    assert record["finite"] and record["eigh_custom_calls"]
    assert record["flops_per_realization"]["diagonalization"] == 10.0 / 3.0 * 16**3
    assert set(record["achieved_tflops"]) >= {"diagonalization", "time_points"} and "time_points_runs" in record
    assert record["xla_flops_per_realization"] > 0
    assert (tmp_path / "gpu_dry_run.json").exists()
    assert record["dtype"]["entropy_production"] == "float64"
    assert set(record["fraction_of_peak_tensor_vector"]) == set(record["achieved_tflops"])
    paths = record["eigh_paths"]
    assert set(paths) == set(gpu.EIGH_PATHS)
    offered = [p for p in paths.values() if "error" not in p]
    assert paths["default"] in offered and paths["QR"] in offered
    assert all(p["residual"] < 1e-12 and p["orthogonality"] < 1e-12 and p["run_s_per_matrix"] > 0 for p in offered)
    assert gpu.peak_for("NVIDIA H100 NVL") == (60.0, 30.0)  # not the SXM entry
    assert gpu.peak_for("NVIDIA H100 80GB HBM3") == (67.0, 34.0)
    import jax

    if jax.devices()[0].platform != "gpu":
        with pytest.raises(SystemExit) as exc:
            gpu.main(["--out", str(tmp_path)])
        assert exc.value.code == 2


def test_float32_precision_tiny(capsys):
    _script("float32_precision").main(["--tiny"])
    out = capsys.readouterr().out
    assert "beta = 1000: entropy_production" in out and "t = 0.01" in out
    assert "errors at late t" in out


def test_short_time_precision_tiny(capsys):
    pytest.importorskip("mpmath")
    out = _script("short_time_precision").main(["--tiny"])
    assert "relative errors against 30 digits" in capsys.readouterr().out
    # float64 keeps relative precision where S ~ 1e-16 (it was 2% off, and 210% before that).
    assert max(out["beta"]["10.0"]["float64"]["system_entropy"]) < 1e-10


def test_lapack_stages_tiny(tmp_path):
    out = _script("lapack_stages").main(["--tiny", "--out", str(tmp_path)])
    # Every route and stage composition is a valid eigendecomposition of the same matrix.
    assert set(out["quality"]) == {"scipy_eigh_evd", "scipy_eigh_evr", "scipy_eigh_ev",
                                   "sytrd_stevd_back_transform", "sytrd_stemr_back_transform"}
    for value in out["quality"].values():
        assert value["residual"] < 1e-12 and value["orthogonality"] < 1e-12, value
    assert all(v > 0 for v in out["ms"].values())
    assert json.loads((tmp_path / "lapack_stages.json").read_text())["n"] == 16
