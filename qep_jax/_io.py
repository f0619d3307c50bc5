"""Run output: one netCDF4-layout HDF5 file per run, and crash-safe resume through a parts directory.

During a run nothing is appended to the output file. Each finished chunk is written to
``<output>.parts/chunk-<start>-<stop>.npz`` (temporary file, fsync, ``os.replace``) and then
recorded, with its SHA-256, in ``<output>.parts/manifest.json`` (same atomic pattern). A killed
run therefore leaves only whole, checksummed chunks. Rerunning the same command verifies them:
a chunk whose checksum does not match (damaged or truncated) is reported and recomputed, never
used. At the end the output is assembled in a temporary file, fsynced, renamed into place and
the parts directory is removed.

``overwrite`` replaces an existing output only at that final rename, so a failed or interrupted
new run leaves the old output in place; finished parts of the *same* parameters are resumed (the
numbers do not depend on the chunking), parts of other parameters are discarded when the new run
saves its first chunk. Temporary files carry the writer's process id, so a later run removes
those that a killed writer left and never those of a writer still running. A run holds an
exclusive lock on ``<output>.lock`` throughout, so a second run on the same output is refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
from typing import Callable

try:
    import fcntl
except ImportError:  # not POSIX: no lock, so two runs writing one output at once are not detected
    fcntl = None

import numpy as np

from ._ensemble import QUANTITIES, ChunkResult, EnsembleResult, run_ensemble, run_parameters
from ._evolve import check_times
from ._open_system import InputError
from ._statistics import Moments

FORMAT = "qep_jax.run/1"


class OutputError(InputError):
    """The output path holds something this run may not use (other parameters, damage)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_to_file`, with what was kept for a resume (still a KeyboardInterrupt).

    ``kept_realizations``: finished realizations a rerun of the same settings will not recompute
    (the parts listed in the manifest on disk). ``output_written``: the output was already complete
    (all realizations kept; a rerun only loads it).
    """

    def __init__(self, parts_directory: str, kept_realizations: int, n_realizations: int,
                 output_written: bool = False, output: str | None = None):
        super().__init__(parts_directory, kept_realizations, n_realizations, output_written, output)
        self.parts_directory = parts_directory
        self.kept_realizations = kept_realizations
        self.n_realizations = n_realizations
        self.output_written = output_written
        self.output = output

    def __str__(self) -> str:
        if self.output_written:
            return f"interrupted after {self.output or 'the output'} was complete; nothing needs recomputing"
        return (f"interrupted with {self.kept_realizations} of {self.n_realizations} realizations kept in "
                f"{self.parts_directory}")


def parameters_hash(parameters: dict) -> str:
    """SHA-256 of the canonical JSON of the run parameters."""
    return hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_replace(path: str):
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    The rename is atomic, so readers (and a resumed run after kill -9) see the old file or the
    complete new one, never a partial write; on any exception the temporary file is removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".tmp-{os.getpid()}-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str, report: Callable[[str], None] = lambda msg: None) -> list[str]:
    """Remove the temporary files a killed writer of ``path`` left beside it; returns their names.

    ``kill -9`` between creating and renaming :func:`_atomic_replace`'s file (84 MB in the audit)
    left ``.tmp-<pid>-XXXXXXXX<name>`` forever. Only names of that exact pattern whose process is
    gone are removed: a concurrent run writing the same output keeps its file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(r"\.tmp-(\d+)-[a-z0-9_]{8}" + re.escape(os.path.basename(path)))
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = pattern.fullmatch(name)
        if not match or int(match.group(1)) == os.getpid() or _process_alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, name))
            removed.append(name)
            report(f"removed {name}, left by an interrupted write of {os.path.basename(path)}.")
    return removed


def _atomic_write(path: str, data: bytes) -> None:
    with _atomic_replace(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _differences(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    parts = []
    for k in keys[:4]:
        a, b = old.get(k), new.get(k)
        if k == "times":
            a, b = (f"{len(a or [])} points", f"{len(b or [])} points") if len(a or []) != len(b or []) \
                else ("a time grid", "another grid of equal length")
        parts.append(f"{k} {a} -> {b}")
    return "; ".join(parts) or "format"


class PartStore:
    """The ``<output>.parts`` directory: verified loading and atomic saving of chunks."""

    def __init__(self, output: str, parameters: dict, report: Callable[[str], None] = lambda msg: None):
        self.directory = output + ".parts"
        self.parameters = parameters
        self.hash = parameters_hash(parameters)
        self.report = report
        self.entries: dict[str, dict] = {}
        self.stale = False  # the directory holds another run's parts, to delete before the first save
        self.output_locked = False  # this process holds the output's lock (see remove_trash)

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.directory, "manifest.json")

    def exists(self) -> bool:
        return os.path.isdir(self.directory)

    def _damaged(self, problem: str) -> OutputError:
        return OutputError(f"{self.manifest_path} is damaged ({problem}); delete {self.directory} "
                           f"or pass --overwrite.")

    def read_manifest(self) -> dict | None:
        """The manifest, checked entry by entry; ``None`` if there is none. Raises ``OutputError`` if damaged."""
        try:
            with open(self.manifest_path, "rb") as f:
                manifest = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as err:
            raise self._damaged(f"not JSON: {err}") from None
        problem = _manifest_problem(manifest)
        if problem:
            raise self._damaged(problem)
        return manifest

    def load(self, replace_other: bool = False) -> list[ChunkResult]:
        """Verified chunks of this run (damaged ones are reported and dropped for recomputation).

        ``replace_other``: parts of other parameters, or a damaged manifest, are not an error; they
        are deleted when this run saves its first chunk, so an early failure still leaves them.
        """
        try:
            manifest = self.read_manifest()
        except OutputError:
            if not replace_other:
                raise
            self.stale = True
            return []
        if manifest is None:
            return []
        if manifest["parameters_hash"] != self.hash:
            if not replace_other:
                raise OutputError(
                    f"{self.directory} holds an unfinished run with different parameters "
                    f"({_differences(manifest['parameters'], self.parameters)}); rerun with the same settings "
                    f"to resume, choose another --output, or pass --overwrite."
                )
            self.stale = True
            return []
        chunks = []
        for name, entry in sorted(manifest["parts"].items()):
            path = os.path.join(self.directory, name)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                self.report(f"part {name} is missing; recomputing realizations {entry['start']}..{entry['stop'] - 1}.")
                continue
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                self.report(f"part {name} is damaged or truncated (checksum mismatch); "
                            f"recomputing realizations {entry['start']}..{entry['stop'] - 1}.")
                os.remove(path)
                continue
            chunks.append(_chunk_from_bytes(data))
            self.entries[name] = entry
        if len(self.entries) != len(manifest["parts"]):
            self._write_manifest()
        return chunks

    def save(self, chunk: ChunkResult) -> None:
        if self.stale:
            self.report(f"discarding the unfinished run of other parameters in {self.directory} (--overwrite).")
            self.remove()
            self.stale = False
        os.makedirs(self.directory, exist_ok=True)
        name = f"chunk-{chunk.start:09d}-{chunk.stop:09d}.npz"
        data = _chunk_to_bytes(chunk)
        _atomic_write(os.path.join(self.directory, name), data)
        entries = {**self.entries, name: {"start": chunk.start, "stop": chunk.stop,
                                          "sha256": hashlib.sha256(data).hexdigest()}}
        self._write_manifest(entries)
        self.entries = entries  # only once recorded: Ctrl-C in the manifest write reported it as kept

    def _write_manifest(self, entries: dict | None = None) -> None:
        os.makedirs(self.directory, exist_ok=True)
        manifest = {"format": FORMAT, "parameters": self.parameters, "parameters_hash": self.hash,
                    "parts": self.entries if entries is None else entries}
        _atomic_write(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())

    def saved_realizations(self) -> int:
        return sum(e["stop"] - e["start"] for e in self.entries.values())

    def kept_realizations(self) -> int:
        """Realizations a rerun of these parameters will resume: the parts the manifest on disk
        lists (if it is this run's) whose files exist. Exact also when Ctrl-C lands inside a
        manifest write, before or after its rename."""
        try:
            manifest = self.read_manifest()
        except (OutputError, OSError):
            return self.saved_realizations()
        if manifest is None or manifest["parameters_hash"] != self.hash:
            return 0
        return sum(e["stop"] - e["start"] for name, e in manifest["parts"].items()
                   if os.path.exists(os.path.join(self.directory, name)))

    def remove(self) -> None:
        """Delete the parts directory: first renamed to ``<parts>.trash-<pid>-<tag>`` (one atomic
        step), then deleted. ``shutil.rmtree`` alone, killed midway, left a parts directory without
        its manifest (deleted early) that no later run recognised or removed; now a kill leaves the
        trash name, which the next run of this output removes (:meth:`remove_trash`).
        """
        trash = f"{self.directory}.trash-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.replace(self.directory, trash)
        except FileNotFoundError:
            return
        except OSError:
            # No trash name (a basename near NAME_MAX: ENAMETOOLONG): delete in place, the manifest
            # last, so that a kill midway leaves a manifest the next run recognises.
            self._remove_in_place()
            return
        _fsync_dir(os.path.dirname(os.path.abspath(self.directory)))
        shutil.rmtree(trash, ignore_errors=True)

    def _remove_in_place(self) -> None:
        try:
            names = sorted(os.listdir(self.directory), key=lambda name: name == "manifest.json")
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(self.directory, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(self.directory)

    def remove_trash(self) -> None:
        """Delete what interrupted :meth:`remove` calls left, except a live other process's.

        While this process holds the output's lock (``output_locked``) no other run of this output
        exists, so every trash is stale, whatever its pid (pid 1, a reused pid, another host's).
        """
        output_locked = self.output_locked
        parent = os.path.dirname(os.path.abspath(self.directory))
        pattern = re.compile(re.escape(os.path.basename(self.directory)) + r"\.trash-(\d+)-[0-9a-f]{8}")
        try:
            names = os.listdir(parent)
        except OSError:
            return
        for name in names:
            match = pattern.fullmatch(name)
            if not match or (int(match.group(1)) != os.getpid() and not output_locked
                             and _process_alive(int(match.group(1)))):
                continue
            path = os.path.join(parent, name)
            shutil.rmtree(path, ignore_errors=True)
            if int(match.group(1)) == os.getpid():  # this process's: finishing its own clean-up
                continue
            if os.path.lexists(path):
                self.report(f"note: could not remove {name}, left by an interrupted clean-up of "
                            f"{os.path.basename(self.directory)}; delete it by hand.")
            else:
                self.report(f"removed {name}, left by an interrupted clean-up of {os.path.basename(self.directory)}.")

    def holds_nothing_to_resume(self) -> bool:
        """True for a parts directory without a manifest that holds only part and temporary files
        (what a run of an older version left when killed while deleting it): nothing in it can be
        resumed, since :meth:`load` uses only parts a manifest lists."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return False
        return all(_PART_NAME.fullmatch(n) or n.startswith(".tmp-") for n in names)


_PART_NAME = re.compile(r"chunk-(\d{9})-(\d{9})\.npz")


def _manifest_problem(manifest) -> str | None:
    """What is wrong with a parsed manifest's structure, or ``None``.

    Part names must match the pattern ``save`` writes: a name like ``../x`` would otherwise make
    a checksum mismatch delete a file outside the parts directory.
    """
    if not isinstance(manifest, dict):
        return f"top level is {type(manifest).__name__}, not an object"
    if not isinstance(manifest.get("parameters"), dict):
        return "'parameters' missing or not an object"
    if not isinstance(manifest.get("parameters_hash"), str):
        return "'parameters_hash' missing or not a string"
    if parameters_hash(manifest["parameters"]) != manifest["parameters_hash"]:
        return "'parameters_hash' does not match 'parameters'"
    if not isinstance(manifest.get("parts"), dict):
        return "'parts' missing or not an object"
    for name, entry in manifest["parts"].items():
        match = _PART_NAME.fullmatch(name)
        if not match:
            return f"part name {name!r} is not chunk-<start>-<stop>.npz"
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            return f"part {name}: 'sha256' missing"
        if (entry.get("start"), entry.get("stop")) != (int(match.group(1)), int(match.group(2))) \
                or entry["start"] >= entry["stop"]:
            return f"part {name}: 'start'/'stop' missing or not the range in its name"
    return None


def _chunk_to_bytes(chunk: ChunkResult) -> bytes:
    arrays = {"range": np.array([chunk.start, chunk.stop, next(iter(chunk.moments.values())).count])}
    for q, m in chunk.moments.items():
        arrays[f"mean/{q}"] = m.mean
        arrays[f"m2/{q}"] = m.m2
        if chunk.series is not None:
            arrays[f"series/{q}"] = chunk.series[q]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _chunk_from_bytes(data: bytes) -> ChunkResult:
    with np.load(io.BytesIO(data)) as z:
        start, stop, count = (int(v) for v in z["range"])
        names = [k.split("/", 1)[1] for k in z.files if k.startswith("mean/")]
        moments = {q: Moments(count, z[f"mean/{q}"], z[f"m2/{q}"]) for q in names}
        has_series = any(k.startswith("series/") for k in z.files)
        series = {q: z[f"series/{q}"] for q in names} if has_series else None
    return ChunkResult(start, stop, moments, series)


def _versions() -> dict:
    import jax
    import jaxlib

    from . import __version__

    return {"qep_jax_version": __version__, "jax_version": jax.__version__, "jaxlib_version": jaxlib.__version__}


def write_run(path: str, result: EnsembleResult) -> None:
    """Write ``result`` atomically as a netCDF4-layout HDF5 file (h5py; opens with h5py and xarray).

    Dimensions ``time``, ``reservoir`` and (with per-realization series) ``realization`` are
    coordinate variables and HDF5 dimension scales. Variables ``<q>_mean``, ``<q>_variance``,
    ``<q>_standard_error`` and optionally ``<q>`` per quantity; parameters, seed, versions and
    device as global attributes.
    """
    import h5py

    params = result.parameters
    with _atomic_replace(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            attrs = {
                "title": "qep_jax spin-GORM ensemble (Esposito, Lindenberg & Van den Broeck 2010, eq. 29)",
                "format": FORMAT,
                "units": "hbar = k_B = 1; entropies in nats",
                "model": params["model"],
                "n_levels": params["n_levels"],
                "delta": params["delta"],
                "coupling_strength": params["coupling_strength"],
                "beta": params["beta"],
                "n_realizations": params["n_realizations"],
                "seed": params["seed"],
                "precision": params["precision"],
                "quantities": ",".join(params["quantities"]),
                "keep_realizations": int(params["keep_realizations"]),
                "parameters_json": json.dumps(params, sort_keys=True),
                "parameters_hash": parameters_hash(params),
                **_versions(),
                "device": str(result.info.get("device", "")),
                "device_count": int(result.info.get("device_count", 1)),
            }
            for k, v in attrs.items():
                f.attrs[k] = v
            scales = {}

            def dimension(name, values, **vattrs):
                ds = f.create_dataset(name, data=values, track_times=False)
                ds.make_scale(name)
                for k, v in vattrs.items():
                    ds.attrs[k] = v
                scales[name] = ds

            dimension("time", result.times, units="1/energy (hbar = 1)", long_name="time t")
            if any(QUANTITIES[q].per_reservoir for q in params["quantities"]):
                n_res = next(result.mean[q].shape[1] for q in params["quantities"] if QUANTITIES[q].per_reservoir)
                dimension("reservoir", np.arange(n_res, dtype=np.int64), long_name="reservoir index r")
            if result.series is not None:
                dimension("realization", np.arange(result.n_realizations, dtype=np.int64),
                          long_name="realization index i (GOE matrix from fold_in(key(seed), i))")

            def variable(name, data, dims, long_name, units):
                ds = f.create_dataset(name, data=np.asarray(data, np.float64), track_times=False)
                for axis, dim in enumerate(dims):
                    ds.dims[axis].attach_scale(scales[dim])
                ds.attrs["long_name"] = long_name
                ds.attrs["units"] = units

            for q in params["quantities"]:
                spec = QUANTITIES[q]
                dims = ("time", "reservoir") if spec.per_reservoir else ("time",)
                variable(f"{q}_mean", result.mean[q], dims, f"ensemble mean of {spec.long_name}", spec.units)
                variable(f"{q}_variance", result.variance[q], dims,
                         f"sample variance (ddof=1) of {spec.long_name}", f"({spec.units})^2")
                variable(f"{q}_standard_error", result.standard_error[q], dims,
                         f"standard error of the mean of {spec.long_name}", spec.units)
                if result.series is not None:
                    variable(q, result.series[q], ("realization",) + dims, spec.long_name, spec.units)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the output is an ordinary file


def load_run(path: str) -> EnsembleResult:
    """Read a file written by :func:`write_run` (or ``qep-jax run``) back into an :class:`EnsembleResult`.

    Example:
        >>> res = qep_jax.load_run("qep_run.h5")  # doctest: +SKIP
        >>> res.mean["entropy_production"][-1], res.standard_error["entropy_production"][-1]  # doctest: +SKIP
    """
    import h5py

    if not os.path.exists(path):
        raise OutputError(f"{path} does not exist; check the path (qep-jax run writes it when the run finishes).")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise OutputError(f"{path} is not a qep_jax run file (format attribute missing).")
            params = json.loads(f.attrs["parameters_json"])
            quantities = params["quantities"]
            read = lambda name: np.asarray(f[name][()])  # noqa: E731
            series = {q: read(q) for q in quantities} if params["keep_realizations"] else None
            info = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()
                    if k in ("device", "device_count", "qep_jax_version", "jax_version", "jaxlib_version")}
            return EnsembleResult(
                times=read("time"),
                parameters=params,
                mean={q: read(f"{q}_mean") for q in quantities},
                variance={q: read(f"{q}_variance") for q in quantities},
                standard_error={q: read(f"{q}_standard_error") for q in quantities},
                series=series,
                info=info,
            )
    except OutputError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise OutputError(f"cannot read {path} as a qep_jax run file ({err}); it is damaged or not a run file.") from None


class OutputLock:
    """An exclusive ``flock`` on ``<output>.lock``, held for the whole of :func:`run_to_file`.

    Two runs with different settings on one output both succeeded, and the later rename silently
    replaced the other's file without ``--overwrite`` (each had checked before either wrote). A
    second writer is now refused. The file is removed at the end, while still locked; a run that
    locked a file being removed sees another file (or none) at the path and tries again. A file
    left by a killed run is locked and reused (the kernel drops the lock of a dead process).
    Without ``fcntl``, or on a file system that refuses locks, nothing is locked.
    """

    def __init__(self, output: str, report: Callable[[str], None] = lambda msg: None):
        self.output = output
        self.path = output + ".lock"
        self.report = report
        self.fd = None
        self.locked = False

    def acquire(self) -> None:
        if fcntl is None:
            return
        nofollow = getattr(os, "O_NOFOLLOW", 0)  # a symlink at the path: its target was truncated
        while True:
            created = False
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | nofollow, 0o666)
                created = True
            except FileExistsError:
                try:
                    self.fd = os.open(self.path, os.O_RDWR | nofollow)
                except FileNotFoundError:
                    continue  # removed by the run that held it
                except PermissionError:
                    # Another user's lock file: flock works on a read-only descriptor too (the
                    # failed open used to skip locking silently, and both runs went ahead).
                    try:
                        self.fd = os.open(self.path, os.O_RDONLY | nofollow)
                    except OSError as err:
                        return self._unlocked(err)
                except OSError as err:  # a symlink (ELOOP) or a directory at the path
                    return self._unlocked(err)
            except OSError as err:
                if err.errno in (errno.EACCES, errno.EROFS):
                    return  # a read-only directory: a finished output can still be read, nothing written
                return self._unlocked(err)
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):
                self.release()
                return self._unlocked(OSError(errno.EINVAL, "not a regular file"))
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder()
                self.release()
                raise OutputError(
                    f"{self.output} is being written by another qep-jax run ({holder}, holding {self.path}); "
                    f"wait for it to finish, or choose another --output."
                ) from None
            except OSError as err:  # a file system without flock: do not leave our file behind
                if created:
                    self._unlink_if_ours()
                self.release()
                return self._unlocked(err)
            self.locked = True
            st = os.fstat(self.fd)
            if _file_identity(self.path) == (st.st_dev, st.st_ino):
                with contextlib.suppress(OSError):  # read-only descriptor: no pid to show
                    os.ftruncate(self.fd, 0)
                    os.write(self.fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                return
            self.locked = False  # removed by the run that held it: lock the file now at the path
            self.release()

    def _unlocked(self, err: OSError) -> None:
        self.report(f"note: cannot lock {self.path} ({err.strerror or err}); another run writing "
                    f"{self.output} at the same time would not be detected.")

    def _unlink_if_ours(self) -> None:
        st = os.fstat(self.fd)
        if _file_identity(self.path) == (st.st_dev, st.st_ino):
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def _holder(self) -> str:
        try:
            pid, host = os.pread(self.fd, 300, 0).decode().split()
            return f"process {int(pid)} on {host}"
        except (OSError, ValueError, UnicodeDecodeError):
            return "process unknown"

    def release(self) -> None:
        fd = self.fd
        if fd is None:
            return
        try:
            if self.locked:
                self.locked = False
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
        finally:
            self.fd = None
            os.close(fd)


def check_output_path(output: str) -> None:
    """Refuse an output that cannot become the run file, before anything is computed."""
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise OutputError(f"output directory {directory} does not exist; create it or choose another --output.")
    # "newdir/" named a file in the current directory for dirname(abspath()); its parts went into
    # newdir/.parts and the final rename failed after the whole run.
    if os.path.isdir(output) or output.endswith(tuple(filter(None, (os.sep, os.altsep)))):
        raise OutputError(f"output {output} is a directory; give a file name such as {os.path.join(output, 'qep_run.h5')}.")


def run_to_file(
    model,
    times,
    n_realizations: int,
    output: str,
    *,
    seed: int = 0,
    quantities=None,
    keep_realizations: bool = False,
    overwrite: bool = False,
    report: Callable[[str], None] = lambda msg: None,
    **runner_kwargs,
) -> tuple[EnsembleResult, bool]:
    """:func:`run_ensemble` with resume and an output file; returns ``(result, already_done)``.

    An existing ``output`` with the same parameters is loaded and returned (``already_done``);
    with other parameters, or unreadable, :class:`OutputError` is raised unless ``overwrite``.
    ``overwrite`` recomputes and replaces the output atomically once the new result is written
    (until then the old file stays); finished parts of the same parameters are resumed, parts of
    other parameters are discarded.

    Ctrl-C raises :class:`RunInterrupted` (a KeyboardInterrupt). Before the output is complete,
    its ``kept_realizations`` counts the parts on disk a rerun will resume. Once the output is
    complete (renamed into place, or found finished) a Ctrl-C still raises it, with
    ``output_written`` true and every realization kept: the clean-up of the parts is finished
    first, and a rerun only loads the output.

    One run at a time writes an output: while one holds ``<output>.lock`` (:class:`OutputLock`),
    another run on the same output, with any settings, raises :class:`OutputError`.
    """
    from ._ensemble import check_quantities

    quantities = check_quantities(quantities)  # None: the default set
    check_output_path(output)
    times = np.asarray(check_times(times), dtype=model.dtype)  # a scalar time becomes (1,), as in run_ensemble
    params = run_parameters(model, times, n_realizations, seed, quantities, keep_realizations)
    store = PartStore(output, params, report)
    # Multi-host: every process computes and gathers every chunk; only process 0 writes, so the
    # output must be on storage all hosts see (they all read the parts when resuming).
    import jax

    writer = jax.process_index() == 0
    state = {"complete": False}
    lock = OutputLock(output, report)
    try:
        if writer:
            lock.acquire()
            store.output_locked = lock.locked
        return _run_to_file(model, times, n_realizations, output, store, overwrite, writer, state,
                            seed=seed, quantities=quantities, keep_realizations=keep_realizations, **runner_kwargs)
    except KeyboardInterrupt as err:
        # The output is complete when this run renamed it into place: with the previous file (or
        # none) gone, its identity changed. A press inside write_run after the rename, or between
        # the rename and the clean-up, used to be reported as "6 of 6 kept in <output>.parts".
        renamed = writer and "identity" in state and _file_identity(output) not in (None, state["identity"])
        if state["complete"] or renamed:
            if writer and (renamed or state.get("clean_up")):
                # Only the parts this run decided to delete (not those of other settings found
                # next to a finished output); a second press leaves trash, which the next run removes.
                _ignoring_ctrl_c(store.remove)
            if writer:
                _ignoring_ctrl_c(store.remove_trash)
            raise RunInterrupted(store.directory, n_realizations, n_realizations, True, output) from err
        kept = _ignoring_ctrl_c(store.kept_realizations)
        raise RunInterrupted(store.directory, store.saved_realizations() if kept is None else kept,
                             n_realizations, False, output) from err
    finally:
        _ignoring_ctrl_c(lock.release)


def _ignoring_ctrl_c(function):
    """``function()``, or ``None`` if a (second) Ctrl-C interrupts it."""
    try:
        return function()
    except KeyboardInterrupt:
        return None


def _file_identity(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _run_to_file(model, times, n_realizations, output, store, overwrite, writer, state, **runner_kwargs):
    report = store.report
    state["identity"] = _file_identity(output)
    if writer:
        remove_stale_temporaries(output, report)
        store.remove_trash()
    if os.path.exists(output) and not overwrite:
        try:
            existing = load_run(output)
        except OutputError as err:
            raise OutputError(f"{err} Pass --overwrite to replace it, or choose another --output.") from None
        if parameters_hash(existing.parameters) != store.hash:
            raise OutputError(
                f"{output} holds a run with different parameters "
                f"({_differences(existing.parameters, store.parameters)}); "
                f"choose another --output or pass --overwrite to replace it."
            )
        state["complete"] = True
        if writer and store.exists():
            # Parts of this very run (an interrupted --overwrite of it) are redundant next to the
            # finished output; they used to stay behind.
            try:
                manifest = store.read_manifest()
            except OutputError:
                manifest = {}  # a damaged manifest is left for the user to see
            if manifest is None and store.holds_nothing_to_resume() \
                    or manifest is not None and manifest.get("parameters_hash") == store.hash:
                state["clean_up"] = True
                store.remove()
                report(f"removed {store.directory}: {output} already holds the finished run.")
        return existing, True
    completed = store.load(replace_other=overwrite)
    if completed:
        report(f"resuming: {sum(c.stop - c.start for c in completed)} of {n_realizations} realizations "
               f"loaded from {store.directory}.")
    result = run_ensemble(model, times, n_realizations, completed=completed,
                          on_chunk=store.save if writer else None, **runner_kwargs)
    if writer:
        write_run(output, result)
        state["complete"] = state["clean_up"] = True
        store.remove()
    return result, False
