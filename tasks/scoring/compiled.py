"""Compiled trees for nightly scoring: a LightGBM booster turned into native code with lleaves.

LightGBM walks its trees node by node through generic data structures; lleaves compiles each
tree into branches of machine code (LLVM), 3.5-3.8 times faster on the bench champion, with
the same arithmetic in double precision. Scoring 10M subscribers is mostly tree walking, so this
is where the night's time goes down. The booster stays the model of record: reason codes (SHAP),
the online endpoint and training use it, and every scoring shard compares a sample of the
compiled probabilities with the booster's (:func:`disagreement`), falling back to the booster
for that shard if they differ by more than :data:`TOLERANCE`.

A compiled forest is cached on disk under ``$CHURN_HOME/cache/compiled/`` by the hash of the
model text, the compiler versions and the CPU it was compiled for: compiling costs a few seconds
per hundred trees, once per model version and machine. Only paths travel to Dask workers; each
process loads the binary once (:func:`_loaded`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version as package_version
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.errors import ChurnError
from tasks.core.files import atomic_path, file_lock
from tasks.training.model_spec import FeatureListError, ModelSpec

logger = logging.getLogger(__name__)

TOLERANCE = 1e-6
"""Largest difference allowed between a compiled and a LightGBM probability (issue 4)."""
CHECK_ROWS = 1_024
"""Rows of every shard also scored by LightGBM to hold the compiled forest to it."""


class CompileError(ChurnError):
    """The booster could not be compiled (the nightly then scores with LightGBM itself)."""


@dataclass(frozen=True)
class CompiledForest:
    """A booster compiled to native code: the model text lleaves reads, and its binary for a host.

    ``host`` keys the CPU (and compiler versions) the binary was built for. A process on another
    kind of machine (a Dask worker elsewhere) compiles its own from the same model text instead
    of running code built for instructions its CPU may lack.
    """

    model_file: Path
    binary: Path
    host: str

    def predict(self, matrix: np.ndarray, threads: int) -> np.ndarray:
        """Probabilities for the rows of ``matrix`` (see :func:`model_matrix`).

        Raises:
            CompileError: this host needed its own binary and compiling it failed.
        """
        if len(matrix) == 0:
            return np.empty(0)
        forest = self if self.host == host_key() else _for_this_host(self.model_file)
        return _loaded(forest.model_file, forest.binary).predict(matrix, n_jobs=threads)


def compile_forest(booster: lgb.Booster, directory: Path, label: str) -> CompiledForest:
    """The compiled form of ``booster`` for this host, from the cache in ``directory`` or compiled now.

    ``label`` (e.g. ``churn_model-v3``) only makes the cached file names readable; the files are
    keyed by the model text's hash, then by :func:`host_key`.

    Raises:
        CompileError: lleaves or LLVM failed on this model.
    """
    model_text = booster.model_to_string()
    digest = hashlib.sha256(model_text.encode()).hexdigest()[:16]
    model_file = directory / f"{label}-{digest}.txt"
    if not model_file.exists():
        with file_lock(directory / f".{model_file.name}.lock"), atomic_path(model_file) as tmp:
            tmp.write_text(model_text)
    return _for_this_host(model_file)


@cache
def host_key() -> str:
    """What a compiled binary depends on besides the model: compiler versions, CPU and features."""
    import llvmlite.binding as llvm

    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot tell on some hosts; the CPU name still keys the cache
        features = ""
    parts = (
        package_version("lleaves"),
        package_version("llvmlite"),
        llvm.get_host_cpu_name(),
        features,
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _for_this_host(model_file: Path) -> CompiledForest:
    host = host_key()
    forest = CompiledForest(model_file, model_file.with_name(f"{model_file.stem}-{host}.bin"), host)
    if forest.binary.exists():
        return forest
    # Two processes (Dask workers) may want the same binary: one compiles, the other waits.
    with file_lock(model_file.with_name(f".{forest.binary.name}.lock")):
        if forest.binary.exists():
            return forest
        began = time.perf_counter()
        try:
            with atomic_path(forest.binary) as tmp:
                _compile(model_file, tmp)
        except Exception as exc:  # lleaves/LLVM raise whatever they raise
            raise CompileError(f"could not compile {model_file.stem} with lleaves: {exc}") from exc
    logger.info(
        "compiled %s in %.1f s to %s", model_file.stem, time.perf_counter() - began, forest.binary
    )
    return forest


def model_matrix(frame: pa.Table, spec: ModelSpec) -> np.ndarray:
    """The model's inputs as one C-ordered float64 matrix, the spec's features in the spec's order.

    The same values LightGBM derives from :func:`tasks.training.model_spec.model_inputs`: numeric features as
    float32 (then widened), nulls as NaN, a categorical feature as the position of its value in
    the training categories (a value unseen in training, or null, as NaN: LightGBM's missing).

    Raises:
        FeatureListError: ``frame`` lacks a feature of the spec.
    """
    missing = [f for f in spec.features if f not in frame.column_names]
    if missing:
        raise FeatureListError(f"the frame lacks model input(s) {', '.join(missing)}")
    categorical = set(spec.categorical)
    matrix = np.empty((frame.num_rows, len(spec.features)), dtype=np.float64)
    for j, name in enumerate(spec.features):
        column = frame.column(name)
        if name in categorical:
            codes = pc.index_in(column.cast(pa.string()), value_set=pa.array(spec.categories[name]))
            matrix[:, j] = codes.to_numpy(zero_copy_only=False)
        else:
            values = column.cast(pa.float32()).to_numpy(zero_copy_only=False)
            matrix[:, j] = values
    return matrix


def disagreement(compiled: np.ndarray, booster: lgb.Booster, matrix: np.ndarray) -> float:
    """Largest difference between compiled probabilities and LightGBM's on a sample of rows."""
    if len(matrix) == 0:
        return 0.0
    rows = np.unique(np.linspace(0, len(matrix) - 1, min(CHECK_ROWS, len(matrix))).astype(np.int64))
    reference = np.asarray(booster.predict(matrix[rows]), dtype=np.float64)
    return float(np.max(np.abs(compiled[rows] - reference)))


# ----------------------------------------------------------------------------- lleaves

_LOCK = threading.Lock()


def _compile(model_file: Path, binary: Path) -> None:
    import lleaves

    model = lleaves.Model(model_file=str(model_file))
    # lleaves writes the object code to ``cache`` when it compiles; remove the empty temp file
    # first, or it would load it as a finished binary.
    binary.unlink(missing_ok=True)
    model.compile(cache=str(binary))


@cache
def _loaded_cached(model_file: str, binary: str, size: int, mtime_ns: int):
    import lleaves

    model = lleaves.Model(model_file=model_file)
    model.compile(cache=binary)
    return model


def _loaded(model_file: Path, binary: Path):
    """The lleaves model for ``binary``, loaded once per process (and again if the file changed)."""
    stat = os.stat(binary)
    with _LOCK:
        return _loaded_cached(str(model_file), str(binary), stat.st_size, stat.st_mtime_ns)
