"""Ensemble runner and run files: reference values, invariance under chunking and device count,
memory refusal, resume after interruption, damage detection, round trip.

All runs share one small problem (N = 6, 4 time points, cheap quantities) so the chunk function
compiles only a few times.
"""

import json
import os
import subprocess
import sys
import textwrap

import h5py
import jax
import numpy as np
import pytest

import qep_jax
from qep_jax._ensemble import TARGET_CHUNKS, default_chunk_size, run_ensemble
from qep_jax._io import OutputError, load_run, run_to_file

N, R, SEED = 6, 5, 7
TIMES = np.linspace(0.0, 30.0, 4)
QUANTITIES = ("entropy_production", "heat", "spin_polarization")
TOL = 1e-12  # different batchings only change rounding


@pytest.fixture(scope="module")
def model():
    return qep_jax.SpinGORM(N, 0.1, 0.3, 10.0)


@pytest.fixture(scope="module")
def reference(model):
    """Independent reference: the core's SpinGORM.simulate and numpy statistics."""
    traj = model.simulate(jax.random.key(SEED), TIMES, R, reservoir_entropies=False)
    rho = np.asarray(traj.system_state)
    return {
        "entropy_production": np.asarray(traj.entropy_production),
        "heat": np.asarray(traj.heat),
        "spin_polarization": np.real(rho[..., 1, 1] - rho[..., 0, 0]),
    }


def _run(model, **kwargs):
    kwargs.setdefault("chunk_size", 2)
    return run_ensemble(model, TIMES, R, seed=SEED, quantities=QUANTITIES, **kwargs)


def test_statistics_match_simulate_and_numpy(model, reference):
    res = _run(model, keep_realizations=True)
    for q, x in reference.items():
        np.testing.assert_allclose(res.series[q], x, rtol=0, atol=TOL)
        np.testing.assert_allclose(res.mean[q], x.mean(0), rtol=0, atol=TOL)
        np.testing.assert_allclose(res.variance[q], x.var(0, ddof=1), rtol=1e-9, atol=TOL)
        np.testing.assert_allclose(res.standard_error[q], x.std(0, ddof=1) / np.sqrt(R), rtol=1e-9, atol=TOL)
    # Physics sanity: D_iS(0) = 0 and D_iS >= 0 (eq. 10 is a relative entropy).
    assert abs(res.mean["entropy_production"][0]) < 1e-12
    assert np.all(res.series["entropy_production"] > -1e-12)
    assert res.mean["heat"].shape == (len(TIMES), 1)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_accelerator_route_vmaps_the_same_numbers(model, reference, monkeypatch, chunk_size):
    """The accelerator route (realizations of a chunk vmapped, memory planned for it) checked on
    the CPU: same series as the reference, default chunks included."""
    monkeypatch.setattr(qep_jax._ensemble, "_vectorizes", lambda device: True)
    res = _run(model, keep_realizations=True, chunk_size=chunk_size)
    assert res.info["chunk_size"] == (chunk_size or 1)  # default granule 1 when vmapped: R / 10 -> 1
    for q, x in reference.items():
        np.testing.assert_allclose(res.series[q], x, rtol=0, atol=TOL)


def test_chunk_size_invariance(model):
    a = _run(model, chunk_size=2)
    b = _run(model, chunk_size=3)
    c = _run(model, chunk_size=None)  # auto from the memory budget
    for q in QUANTITIES:
        for other in (b, c):
            np.testing.assert_allclose(other.mean[q], a.mean[q], rtol=0, atol=TOL)
            np.testing.assert_allclose(other.variance[q], a.variance[q], rtol=1e-10, atol=TOL)
    assert a.info["chunk_size"] == 2 and b.info["chunk_size"] == 3


@pytest.mark.parametrize("n_real", [1, 2, 5, 7, 33, 64, 96, 1000, 12345])
@pytest.mark.parametrize("n_dev, cap, granule", [(1, 24, 2), (1, 1, 2), (2, 92, 2), (4, 3, 2), (1, 500, 1),
                                                 (3, 7, 4)])
def test_default_chunk_size_whole_batches_little_padding(n_real, n_dev, cap, granule):
    chunk = default_chunk_size(n_real, n_dev, cap, granule)
    step = n_dev * granule
    assert 1 <= chunk <= cap * n_dev
    if cap * n_dev >= step:  # whole batches on every device whenever memory allows one
        assert chunk % step == 0
    n_chunks = -(-n_real // chunk)
    largest = cap * n_dev - (cap * n_dev) % step if cap * n_dev >= step else cap * n_dev
    # About TARGET_CHUNKS chunks (two more at most, for less padding) unless memory forces more,
    # and less than one step of padding per chunk.
    assert n_chunks <= max(TARGET_CHUNKS, -(-n_real // largest)) + 2
    assert n_chunks * chunk - n_real < n_chunks * step


def test_default_chunk_size_of_the_measured_case():
    # 64 realizations at N = 200 on 2 cores: chunks of 7 (the old default, 20.7 ms per
    # realization) left a batch of one; chunks of 8 ran at 16.5 ms.
    assert default_chunk_size(64, 1, 24, 2) == 8
    # The CLI default (96 realizations): 8 chunks of 12 rather than 10 of 10 with 4 padded.
    assert default_chunk_size(96, 1, 30, 2) == 12


def test_memory_refusal_says_what_would_fit(model):
    with pytest.raises(qep_jax.InputError, match=r"memory_budget >= .* or n_levels <= \d+"):
        run_ensemble(qep_jax.SpinGORM(60, 0.1, 0.1, 10.0), TIMES, 2, memory_budget=300_000)
    with pytest.raises(qep_jax.InputError, match=r"chunk_size <= \d+"):
        _run(model, chunk_size=5, memory_budget=60_000)
    # A chunk_size beyond the run is clamped to it, so only the run's R realizations must fit.
    big = _run(model, chunk_size=10**7)
    np.testing.assert_allclose(big.mean["heat"], _run(model, chunk_size=R).mean["heat"], atol=TOL)


def test_bad_arguments(model):
    with pytest.raises(qep_jax.InputError, match="unknown quantity"):
        run_ensemble(model, TIMES, 2, quantities=["entropy"])
    with pytest.raises(qep_jax.InputError, match="n_realizations"):
        run_ensemble(model, TIMES, 0)
    with pytest.raises(qep_jax.InputError, match="seed"):
        run_ensemble(model, TIMES, 2, seed=-1)


def test_more_bad_arguments(model, tmp_path):
    with pytest.raises(qep_jax.InputError, match="devices is empty"):
        run_ensemble(model, TIMES, 2, devices=[])
    # A scalar time is one time point in run_to_file as in run_ensemble (it used to raise a TypeError).
    result, _ = run_to_file(model, 5.0, 2, str(tmp_path / "scalar.h5"), seed=SEED, quantities=QUANTITIES)
    expected = run_ensemble(model, [5.0], 2, seed=SEED, quantities=QUANTITIES)
    np.testing.assert_allclose(result.mean["heat"], expected.mean["heat"], atol=TOL)


def test_float32_realizations_are_the_float64_matrices_rounded(tmp_path):
    """simulate and the runner draw realization i alike (float64 draw, then cast), and a float32 run
    records which draw it used, so a parts directory of the other x64 setting is not resumed."""
    model32 = qep_jax.SpinGORM(N, np.float32(0.1), np.float32(0.3), np.float32(10.0))
    with pytest.warns(UserWarning, match="float32"):
        traj = model32.simulate(jax.random.key(SEED), TIMES, 3, reservoir_entropies=False)
        runner = run_ensemble(model32, TIMES, 3, seed=SEED, quantities=QUANTITIES, keep_realizations=True,
                              chunk_size=2)
    assert traj.entropy_production.dtype == np.float32
    np.testing.assert_allclose(runner.series["entropy_production"], traj.entropy_production, atol=1e-6)
    x64 = qep_jax.goe(jax.random.fold_in(jax.random.key(SEED), 2), N)
    from qep_jax.models._spin_gorm import realization_matrix

    np.testing.assert_array_equal(realization_matrix(jax.random.key(SEED), 2, N, np.float32),
                                  np.asarray(x64).astype(np.float32))
    # The x64 setting decides the draw of a float32 run; it is part of the run's parameters.
    out = str(tmp_path / "f32.h5")
    with pytest.warns(UserWarning, match="float32"), jax.enable_x64(False):
        with pytest.raises(_Interrupt):
            run_to_file(model32, TIMES, 4, out, seed=SEED, quantities=QUANTITIES, chunk_size=2,
                        progress=_interrupt_after(2))
    with pytest.raises(OutputError, match="goe_draw float32 -> float64"):  # refused before any run
        run_to_file(model32, TIMES, 4, out, seed=SEED, quantities=QUANTITIES, chunk_size=2)


def _file_content(path):
    with h5py.File(path, "r") as f:
        data = {name: f[name][()] for name in f}
        attrs = {k: v for k, v in f.attrs.items() if k not in ("device", "device_count")}
    return data, attrs


def _assert_same_file(p, q):
    (da, aa), (db, ab) = _file_content(p), _file_content(q)
    assert sorted(da) == sorted(db)
    for name in da:
        np.testing.assert_array_equal(da[name], db[name])  # same chunking: bitwise equal
    assert aa.keys() == ab.keys()
    for k in aa:
        assert np.all(aa[k] == ab[k]), k


class _Interrupt(Exception):
    pass


def _interrupt_after(n_done, error=None):
    def progress(done, total):
        if done >= n_done:
            raise error or _Interrupt
    return progress


def test_resume_after_interruption_gives_identical_file(model, tmp_path):
    full = str(tmp_path / "full.h5")
    run_to_file(model, TIMES, R, full, seed=SEED, quantities=QUANTITIES, keep_realizations=True, chunk_size=2)
    out = str(tmp_path / "resumed.h5")
    with pytest.raises(_Interrupt):
        run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES, keep_realizations=True,
                    chunk_size=2, progress=_interrupt_after(4))
    assert not os.path.exists(out)
    manifest = json.load(open(out + ".parts/manifest.json"))
    assert sorted((e["start"], e["stop"]) for e in manifest["parts"].values()) == [(0, 2), (2, 4)]
    messages = []
    result, already = run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES,
                                  keep_realizations=True, chunk_size=2, report=messages.append)
    assert not already and result.info["resumed_realizations"] == 4
    assert any("resuming: 4 of 5" in m for m in messages)
    assert not os.path.exists(out + ".parts")
    _assert_same_file(full, out)
    # Rerunning a finished run recomputes nothing.
    again, already = run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES,
                                 keep_realizations=True, chunk_size=2)
    assert already
    np.testing.assert_array_equal(again.mean["heat"], result.mean["heat"])


@pytest.mark.parametrize("part", ["chunk-000000002-000000004.npz",
                                  # a gap before an intact part, not only at the end, is scheduled again
                                  "chunk-000000000-000000002.npz"])
def test_damaged_part_is_detected_and_recomputed(model, tmp_path, part):
    full = str(tmp_path / "full.h5")
    run_to_file(model, TIMES, R, full, seed=SEED, quantities=QUANTITIES, chunk_size=2)
    out = str(tmp_path / "out.h5")
    with pytest.raises(_Interrupt):
        run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES, chunk_size=2,
                    progress=_interrupt_after(4))
    path = os.path.join(out + ".parts", part)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])  # truncated, as by a full disk
    messages = []
    result, _ = run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES, chunk_size=2,
                            report=messages.append)
    assert any(f"{part} is damaged" in m for m in messages)
    assert result.info["resumed_realizations"] == 2
    _assert_same_file(full, out)


def test_existing_output_with_other_parameters(model, tmp_path):
    out = str(tmp_path / "run.h5")
    run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES, chunk_size=2)
    with pytest.raises(OutputError, match=r"different parameters \(seed 7 -> 8\).*--overwrite"):
        run_to_file(model, TIMES, R, out, seed=8, quantities=QUANTITIES, chunk_size=2)
    result, already = run_to_file(model, TIMES, R, out, seed=8, quantities=QUANTITIES, chunk_size=2,
                                  overwrite=True)
    assert not already and load_run(out).parameters["seed"] == 8
    # An unfinished run with other parameters is refused as well.
    with pytest.raises(_Interrupt):
        run_to_file(model, TIMES, R, str(tmp_path / "b.h5"), seed=1, quantities=QUANTITIES, chunk_size=2,
                    progress=_interrupt_after(2))
    with pytest.raises(OutputError, match="unfinished run with different parameters"):
        run_to_file(model, TIMES, R, str(tmp_path / "b.h5"), seed=2, quantities=QUANTITIES, chunk_size=2)
    # A file that is not a run file is reported, not used.
    open(tmp_path / "junk.h5", "wb").write(b"not hdf5")
    with pytest.raises(OutputError, match="damaged or not a run file"):
        run_to_file(model, TIMES, R, str(tmp_path / "junk.h5"), seed=SEED, quantities=QUANTITIES)


def test_output_round_trip(model, tmp_path):
    out = str(tmp_path / "rt.h5")
    result, _ = run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES, keep_realizations=True,
                            chunk_size=2)
    back = load_run(out)
    np.testing.assert_array_equal(back.times, TIMES)
    assert back.parameters == result.parameters
    for q in QUANTITIES:
        for field in ("mean", "variance", "standard_error", "series"):
            np.testing.assert_array_equal(getattr(back, field)[q], getattr(result, field)[q])
    with h5py.File(out) as f:
        assert f.attrs["seed"] == SEED and f.attrs["n_levels"] == N
        assert f.attrs["jax_version"] == jax.__version__
        assert f["heat_mean"].dims[1][0].name == "/reservoir"
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert dict(ds.sizes) == {"time": 4, "reservoir": 1, "realization": R}
        np.testing.assert_array_equal(ds["entropy_production_mean"].values, result.mean["entropy_production"])


def test_device_count_invariance(model, tmp_path):
    script = textwrap.dedent(f"""
        import jax, numpy as np, json
        jax.config.update("jax_enable_x64", True)
        import qep_jax
        assert jax.device_count() == 2
        res = qep_jax.run_ensemble(qep_jax.SpinGORM({N}, 0.1, 0.3, 10.0), {TIMES.tolist()}, {R}, seed={SEED},
                                   quantities={list(QUANTITIES)}, keep_realizations=True, chunk_size=3)
        print(json.dumps({{q: res.series[q].tolist() for q in res.series}}))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    one = _run(model, keep_realizations=True)
    for q in QUANTITIES:
        np.testing.assert_allclose(np.asarray(two[q]), one.series[q], rtol=0, atol=TOL)


def test_two_host_devices_with_reservoir_entropies_and_batched_eigh():
    """Regression: with several CPU devices every host callback hung (pure_callback copies its
    operands to device 0, which never happened while device 0 was inside its own callback). Every
    quantity (reservoir entropies: eigenvalue problems per time point) and N = 40, batched per device."""
    n, r, times = 40, 4, [0.0, 20.0, 40.0]
    script = textwrap.dedent(f"""
        import jax, json
        jax.config.update("jax_enable_x64", True)
        import qep_jax
        assert jax.device_count() == 2
        res = qep_jax.run_ensemble(qep_jax.SpinGORM({n}, 0.1, 0.3, 10.0), {times}, {r}, seed=3,
                                   keep_realizations=True, chunk_size=4)
        print(json.dumps({{q: res.series[q].tolist() for q in res.series}}))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    one = run_ensemble(qep_jax.SpinGORM(n, 0.1, 0.3, 10.0), times, r, seed=3, keep_realizations=True)
    assert set(two) == set(one.series) and "mutual_information" in two
    for q in two:
        np.testing.assert_allclose(np.asarray(two[q]), one.series[q], rtol=0, atol=1e-11)


def test_memory_refusal_for_huge_n_is_fast_and_names_the_largest_fitting_n():
    # The largest fitting N was found by estimating every N below the request: 26 s for N = 2e7.
    # Counted, not timed (no wall-clock bounds in unit tests): bisection needs ~log2(N) estimates.
    from qep_jax import _ensemble
    from qep_jax._ensemble import _need, _realization_bytes, plan_memory

    calls = []

    def counted(*args):
        calls.append(args[0])
        return _realization_bytes(*args)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(_ensemble, "_realization_bytes", counted)
        with pytest.raises(qep_jax.InputError, match=r"n_levels <= (\d+)") as err:
            plan_memory(100_000_000, 101, ("entropy_production",), 8, 2 * 2**30)
    assert 0 < len(calls) < 100
    # Bisection agrees with the scan it replaced (independent reference at small N).
    budget = 300_000
    with pytest.raises(qep_jax.InputError, match=r"n_levels <= (\d+)") as err:
        plan_memory(60, len(TIMES), QUANTITIES, 8, budget)
    scanned = max(n for n in range(2, 60) if _need(n, len(TIMES), 8, False, 3, budget)[0] <= budget)
    assert f"n_levels <= {scanned}." in str(err.value)


def test_memory_refusal_does_not_round_the_need_down_to_the_budget():
    # "needs about 2.00 GiB but memory_budget is 2.00 GiB" when the need was a little above 2 GiB.
    from qep_jax._ensemble import _format_bytes

    assert _format_bytes(2 * 2**30 + 1000, up=True) == "2.01 GiB"
    assert _format_bytes(2 * 2**30) == "2.00 GiB" and _format_bytes(2 * 2**30, up=True) == "2.00 GiB"
    assert _format_bytes(2 * 2**30 - 1) == "1.99 GiB"


def test_keep_realizations_counts_the_series_against_the_budget(model):
    # Every kept series stays in memory until the end: 1e8 realizations were started without complaint.
    with pytest.raises(qep_jax.InputError, match=r"keep_realizations=True holds 100000000 realizations.*"
                                                 r"raise memory_budget"):
        run_ensemble(model, TIMES, 100_000_000, quantities=QUANTITIES, keep_realizations=True)
    # Without the series the same count only needs one chunk at a time (not run here).
    from qep_jax._ensemble import check_memory

    check_memory(model, len(TIMES), 100_000_000, QUANTITIES, False, None, 2 * 2**30, 1)


@pytest.mark.parametrize("seed", [2**63, 2**64, 99999999999999999999])
def test_seed_out_of_range_is_refused(model, seed):
    # jax.random.key raised OverflowError for seeds >= 2**63.
    with pytest.raises(qep_jax.InputError, match=r"seed=\d+ is too large; use 0 <= seed < 2\*\*63"):
        run_ensemble(model, TIMES, 2, seed=seed)


def test_largest_seed_runs(model):
    res = run_ensemble(model, TIMES, 2, seed=2**63 - 1, quantities=QUANTITIES, chunk_size=2)
    assert np.all(np.isfinite(res.mean["heat"]))


def test_overwrite_keeps_the_old_output_until_the_new_one_is_written(model, tmp_path):
    # --overwrite deleted the output and parts first: a failing or interrupted new run lost both.
    from qep_jax._io import RunInterrupted

    out = str(tmp_path / "keep.h5")
    run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES, chunk_size=2)
    with pytest.raises(qep_jax.InputError, match="memory_budget"):
        run_to_file(model, TIMES, R, out, seed=8, quantities=QUANTITIES, overwrite=True, memory_budget=1)
    assert load_run(out).parameters["seed"] == SEED
    with pytest.raises(RunInterrupted) as err:
        run_to_file(model, TIMES, R, out, seed=8, quantities=QUANTITIES, chunk_size=2, overwrite=True,
                    progress=_interrupt_after(2, KeyboardInterrupt))
    assert err.value.kept_realizations == 2 and isinstance(err.value, KeyboardInterrupt)
    assert load_run(out).parameters["seed"] == SEED
    # The same command again resumes the kept chunks (same parameters), then replaces the output.
    result, already = run_to_file(model, TIMES, R, out, seed=8, quantities=QUANTITIES, chunk_size=2,
                                  overwrite=True)
    assert not already and result.info["resumed_realizations"] == 2
    assert load_run(out).parameters["seed"] == 8 and not os.path.exists(out + ".parts")


def test_a_ctrl_c_python_drops_stops_run_to_file_after_the_chunk(model, tmp_path, monkeypatch):
    # A KeyboardInterrupt raised inside a gc callback or __del__ (jax's _xla_gc_callback runs during
    # compilation) is dropped by Python; the run used to go on to the end.
    import signal

    from qep_jax import _interrupt
    from qep_jax._io import RunInterrupted

    class Drops:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    def progress(done, total):
        if done >= 2:
            Drops()

    monkeypatch.setattr(_interrupt.CtrlC, "unraisable", lambda self, default, hook_args: None)  # no re-send
    out = str(tmp_path / "dropped.h5")
    with pytest.raises(RunInterrupted) as err:
        run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES, chunk_size=2, progress=progress)
    assert err.value.kept_realizations == 2 and not os.path.exists(out)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_overwrite_discards_parts_of_other_parameters_only_when_it_saves(model, tmp_path):
    out = str(tmp_path / "b.h5")
    with pytest.raises(_Interrupt):
        run_to_file(model, TIMES, R, out, seed=1, quantities=QUANTITIES, chunk_size=2,
                    progress=_interrupt_after(2))
    with pytest.raises(qep_jax.InputError, match="memory_budget"):
        run_to_file(model, TIMES, R, out, seed=2, quantities=QUANTITIES, overwrite=True, memory_budget=1)
    assert json.load(open(out + ".parts/manifest.json"))["parameters"]["seed"] == 1
    messages = []
    result, _ = run_to_file(model, TIMES, R, out, seed=2, quantities=QUANTITIES, chunk_size=2, overwrite=True,
                            report=messages.append)
    assert result.info["resumed_realizations"] == 0 and any("discarding" in m for m in messages)
    assert load_run(out).parameters["seed"] == 2


@pytest.mark.parametrize("damage", ["list", "no_sha256", "parts_null", "no_hash", "bad_name", "wrong_hash"])
def test_structurally_damaged_manifest_gives_the_documented_error(model, tmp_path, damage):
    # Valid JSON of the wrong shape raised TypeError/KeyError/AttributeError, or (no parameters_hash)
    # claimed different parameters.
    out = str(tmp_path / "m.h5")
    with pytest.raises(_Interrupt):
        run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES, chunk_size=2,
                    progress=_interrupt_after(2))
    path = out + ".parts/manifest.json"
    manifest = json.load(open(path))
    entry = next(iter(manifest["parts"].values()))
    if damage == "list":
        manifest = []
    elif damage == "no_sha256":
        del entry["sha256"]
    elif damage == "parts_null":
        manifest["parts"] = None
    elif damage == "no_hash":
        del manifest["parameters_hash"]
    elif damage == "bad_name":
        manifest["parts"] = {"../../m.h5": entry}
    else:
        manifest["parameters_hash"] = "0" * 64
    json.dump(manifest, open(path, "w"))
    with pytest.raises(OutputError, match=r"manifest.json is damaged \(.+\); delete .*m.h5.parts or pass --overwrite"):
        run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES, chunk_size=2)
    result, _ = run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES, chunk_size=2, overwrite=True)
    assert result.info["resumed_realizations"] == 0 and not os.path.exists(out + ".parts")


def test_missing_and_damaged_outputs_are_named_as_such(model, tmp_path):
    with pytest.raises(OutputError, match="nothere.h5 does not exist"):
        load_run(str(tmp_path / "nothere.h5"))
    open(tmp_path / "junk.h5", "wb").write(b"not hdf5")
    with pytest.raises(OutputError, match="damaged or not a run file.*Pass --overwrite to replace it, or choose "
                                          "another --output"):
        run_to_file(model, TIMES, R, str(tmp_path / "junk.h5"), seed=SEED, quantities=QUANTITIES)


def test_temporary_files_of_killed_writers_are_removed(model, tmp_path):
    # kill -9 during the final write left .tmp-XXXX<output> forever.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".tmp-{dead.pid}-abc_e9gh" "t.h5"
    live = tmp_path / f".tmp-{os.getppid()}-abcdefgh" "t.h5"  # a running writer's file stays
    other = tmp_path / f".tmp-{dead.pid}-abcdefgh" "other.h5"  # another output's file stays
    for f in (stale, live, other):
        f.write_bytes(b"partial")
    messages = []
    run_to_file(model, TIMES, R, str(tmp_path / "t.h5"), seed=SEED, quantities=QUANTITIES, chunk_size=2,
                report=messages.append)
    assert not stale.exists() and live.exists() and other.exists()
    assert any(stale.name in m for m in messages)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(f".tmp-{os.getpid()}-")]


def test_chunk_statistics_are_merged_as_they_arrive(model):
    """Every chunk's statistics stayed in memory until the end (chunks x 2 T x quantities, 688 MiB
    over a 64 MiB budget with 3000 chunks); now only a chunk that waits for an earlier one is held,
    and the merge order is the realization order, so the numbers are those of one chunk."""
    import gc
    import weakref

    refs, alive = [], []

    def progress(done, total):
        gc.collect()
        alive.append(sum(r() is not None for r in refs))

    res = run_ensemble(model, TIMES, 7, seed=4, quantities=QUANTITIES, chunk_size=1,
                       on_chunk=lambda c: refs.append(weakref.ref(c)), progress=progress)
    assert len(refs) == 7 and max(alive) <= 1, alive
    whole = run_ensemble(model, TIMES, 7, seed=4, quantities=QUANTITIES, chunk_size=7)
    for q in QUANTITIES:
        np.testing.assert_allclose(res.mean[q], whole.mean[q], rtol=1e-13, atol=1e-15)


def test_ordered_merge_equals_the_sorted_fold_in_any_arrival_order():
    from qep_jax._ensemble import ChunkResult, _OrderedMerge
    from qep_jax._statistics import Moments, merge_all

    rng = np.random.default_rng(3)
    samples = rng.normal(size=(40, 5))
    bounds = [0, 3, 4, 11, 20, 21, 33, 40]
    chunks = [ChunkResult(a, b, {"q": Moments.from_samples(samples[a:b])}, {"q": samples[a:b]})
              for a, b in zip(bounds[:-1], bounds[1:])]
    expected = merge_all(c.moments["q"] for c in chunks)
    for order in (rng.permutation(len(chunks)) for _ in range(5)):
        merge = _OrderedMerge(("q",), True)
        for i in order:
            merge.add(chunks[i])
        moments, series = merge.result(40)
        np.testing.assert_array_equal(moments["q"].mean, expected.mean)
        np.testing.assert_array_equal(moments["q"].m2, expected.m2)
        np.testing.assert_array_equal(series["q"], samples)


def test_cpu_chunks_count_one_batch_of_working_memory():
    """On the CPU a device loops over its chunk in batches: only a batch's working memory is live,
    plus every realization's series. Charging the whole chunk refused --chunk-size 64 at N = 200,
    T = 1000 ('needs 3.47 GiB'; 178 MiB measured)."""
    from qep_jax._ensemble import chunk_bytes, check_memory

    model = qep_jax.SpinGORM(200, 0.1, 0.1, 10.0)
    plan = check_memory(model, 1000, 64, ("entropy_production",), False, 64, 2 * 2**30, 1)
    assert plan.live_batch is not None and chunk_bytes(plan, 64) < 2**29
    with pytest.raises(qep_jax.InputError, match="chunk_size 64 needs"):
        check_memory(model, 1000, 64, ("entropy_production",), False, 64, 2 * 2**30, 1, vectorized=True)


def test_kept_series_and_chunk_share_the_cpu_budget():
    """On the CPU the kept series and the chunk live in the same memory: each fitting the budget
    alone let a run use about twice it (1035 MiB measured with a 512 MiB budget)."""
    from qep_jax._ensemble import check_memory, kept_series_bytes

    model = qep_jax.SpinGORM(4, 0.1, 0.1, 10.0)
    quantities = ("entropy_production", "heat", "mutual_information")
    n_times, budget, r = 100_000, 512 * 2**20, 100
    kept = kept_series_bytes(r, n_times, quantities)
    assert kept < budget
    with pytest.raises(qep_jax.InputError, match=r"keep_realizations=True holds about .* which leaves less than "
                                                 r"one realization"):
        check_memory(model, n_times, r, quantities, True, None, budget, 1)
    check_memory(model, n_times, r, quantities, False, None, budget, 1)
    check_memory(model, n_times, r, quantities, True, None, budget, 1, vectorized=True)  # host vs device


@pytest.mark.parametrize("n_levels, n_times, budget", [(800, 100, 300 * 2**20), (200, 100, 8 * 2**20),
                                                       (60, 4, 300_000)])
def test_memory_suggestions_are_accepted(n_levels, n_times, budget):
    """The suggested N was estimated with another time batch than the plan's (n_levels <= 799 was
    then refused), and the suggested budget grew the time block with it below 256 MiB (22.03 MiB
    was needed after 20.34 MiB was suggested)."""
    import re

    from qep_jax._cli import parse_bytes
    from qep_jax._ensemble import plan_memory

    quantities = ("entropy_production", "mutual_information")
    with pytest.raises(qep_jax.InputError) as err:
        plan_memory(n_levels, n_times, quantities, 8, budget)
    message = str(err.value)
    suggested_budget = re.search(r"memory_budget >= ([\d.]+) (\w+)", message)
    plan_memory(n_levels, n_times, quantities, 8, parse_bytes(suggested_budget.group(1) + suggested_budget.group(2)))
    suggested_n = re.search(r"n_levels <= (\d+)", message)
    if suggested_n:
        plan_memory(int(suggested_n.group(1)), n_times, quantities, 8, budget)


def test_run_arguments_are_checked_before_a_finished_run_is_matched(model, tmp_path):
    """run_parameters took int() of its arguments before any check: run_to_file(seed=0.5) returned
    the finished seed-0 run, and a SpinTwoGORM failed with an AttributeError."""
    from qep_jax import run_to_file

    out = tmp_path / "run.h5"
    run_to_file(model, TIMES, 2, str(out), seed=0, quantities=QUANTITIES, )
    for kwargs, message in (({"seed": 0.5}, "seed"), ({"seed": False}, "seed"),
                            ({"n_realizations": 2.9}, "n_realizations")):
        args = {"n_realizations": 2, "seed": 0, **kwargs}
        with pytest.raises(qep_jax.InputError, match=message):
            run_to_file(model, TIMES, args["n_realizations"], str(out), seed=args["seed"], quantities=QUANTITIES)
    with pytest.raises(qep_jax.InputError, match="model must be a qep_jax.SpinGORM"):
        run_to_file(qep_jax.SpinTwoGORM(4, 0.1, 0.1, 1.0, 2.0), TIMES, 2, str(out), )


def test_run_ensemble_argument_forms(model):
    """quantities=None is the default set (run_to_file took it, run_ensemble failed with a TypeError);
    one device instead of a list, and more realizations than fold_in can index, are InputErrors."""
    import jax

    res = run_ensemble(model, TIMES, 2, quantities=None)
    assert set(res.mean) == set(qep_jax._ensemble.DEFAULT_QUANTITIES)
    with pytest.raises(qep_jax.InputError, match="devices must be a list"):
        run_ensemble(model, TIMES, 2, devices=jax.devices()[0])
    with pytest.raises(qep_jax.InputError, match="n_realizations=4294967297 is more than 4294967296"):
        run_ensemble(model, TIMES, 2**32 + 1)
    with pytest.raises(qep_jax.InputError, match="keep_realizations='no' must be True or False"):
        run_ensemble(model, TIMES, 2, keep_realizations="no")


def test_a_non_finite_realization_is_refused_and_named(model, poison_gather):
    """A NaN made the time point's mean, variance and standard error NaN without a word (and an inf
    gave inf or NaN depending on the chunking); now the run stops, naming the realization, after
    keeping the chunks finished before it."""
    poison_gather(5, (1, 2), np.nan)  # the 5th gather: the heat of chunk [2, 4)
    kept = []
    with pytest.raises(FloatingPointError, match=r"heat is not finite for realization\(s\) \[3\] \(first at t = 20\)"):
        _run(model, on_chunk=kept.append)
    assert [(c.start, c.stop) for c in kept] == [(0, 2)]


# ---------------------------------------- behaviour pinned by a mutation review of runner and files


def test_a_run_with_other_times_or_more_realizations_is_refused(model, tmp_path):
    """The parameters hash covers the time grid and n_realizations: an unfinished run resumed on
    another grid of the same length mixed parts from both grids, and a finished R = 3 output asked
    for with R = 6 came back as already done with 3."""
    out = str(tmp_path / "a.h5")
    with pytest.raises(_Interrupt):
        run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES, chunk_size=2,
                    progress=_interrupt_after(4))
    with pytest.raises(OutputError, match="unfinished run with different parameters"):
        run_to_file(model, 2 * TIMES, R, out, seed=SEED, quantities=QUANTITIES, chunk_size=2)
    done = str(tmp_path / "b.h5")
    run_to_file(model, TIMES, 3, done, seed=SEED, quantities=QUANTITIES, chunk_size=2)
    with pytest.raises(OutputError, match="n_realizations 3 -> 6"):
        run_to_file(model, TIMES, 6, done, seed=SEED, quantities=QUANTITIES, chunk_size=2)


def test_completed_chunks_outside_the_run_are_refused(model):
    from qep_jax._ensemble import ChunkResult
    from qep_jax._statistics import Moments

    beyond = ChunkResult(2, 4, {"entropy_production": Moments.from_samples(np.zeros((2, len(TIMES))))})
    with pytest.raises(qep_jax.InputError, match="lie outside 0..3"):
        run_ensemble(model, TIMES, 3, quantities=["entropy_production"], completed=[beyond], chunk_size=2)


@pytest.mark.parametrize("n, n_times, budget_mib", [(60, 100, 64), (200, 1000, 256)])
def test_memory_plan_chunk_fits_its_budget(n, n_times, budget_mib):
    """The planned chunk, working memory and kept series included, fits the budget; the series are
    charged twice (the device result and its float64 host copy)."""
    from qep_jax._ensemble import chunk_bytes, plan_memory

    budget = budget_mib * 2**20
    plan = plan_memory(n, n_times, QUANTITIES, 8, budget)
    assert plan.per_device >= 1 and chunk_bytes(plan, plan.per_device) <= budget
    assert plan.output_bytes == 2 * 8 * n_times * len(QUANTITIES)


def test_kept_count_without_a_readable_manifest(model, tmp_path):
    """With the manifest unreadable, the parts themselves give the count of kept realizations."""
    from qep_jax._ensemble import ChunkResult, run_parameters
    from qep_jax._io import PartStore
    from qep_jax._statistics import Moments

    store = PartStore(str(tmp_path / "r.h5"), run_parameters(model, TIMES, R, SEED, ("entropy_production",), False))
    for start, stop in [(0, 2), (2, 4)]:
        store.save(ChunkResult(start, stop, {"entropy_production": Moments.from_samples(np.zeros((stop - start, 4)))}))
    open(store.manifest_path, "w").write("{broken")
    assert store.kept_realizations() == 4


def test_file_attributes_are_the_run_parameters(model, tmp_path):
    """h5py and xarray users read the attributes, not parameters_json: each must be the parameter."""
    out = str(tmp_path / "attrs.h5")
    result, _ = run_to_file(model, TIMES, R, out, seed=SEED, quantities=QUANTITIES, chunk_size=2)
    with h5py.File(out) as f:
        for key in ("delta", "beta", "coupling_strength", "n_levels", "n_realizations", "seed", "precision",
                    "keep_realizations"):
            assert f.attrs[key] == result.parameters[key], key
