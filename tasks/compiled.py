"""Compiled trees for nightly scoring: a LightGBM booster turned into native code with lleaves.

LightGBM walks its trees node by node through generic data structures; lleaves compiles each
tree into branches of machine code (LLVM), about four times faster on the nightly models, with
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
from tasks.train import FeatureListError, ModelSpec

logger = logging.getLogger(__name__)

TOLERANCE = 1e-6
"""Largest difference allowed between a compiled and a LightGBM probability (issue 4)."""
CHECK_ROWS = 1_024
"""Rows of every shard also scored by LightGBM to hold the compiled forest to it."""


class CompileError(ChurnError):
    """The booster could not be compiled (the nightly then scores with LightGBM itself)."""


@dataclass(frozen=True)
class CompiledForest:
    """A booster compiled to native code: the model text lleaves read and its binary."""

    model_file: Path
    binary: Path

    def predict(self, matrix: np.ndarray, threads: int) -> np.ndarray:
        """Probabilities for the rows of ``matrix`` (see :func:`model_matrix`)."""
        if len(matrix) == 0:
            return np.empty(0)
        return _loaded(self.model_file, self.binary).predict(matrix, n_jobs=threads)


def compile_forest(booster: lgb.Booster, directory: Path, label: str) -> CompiledForest:
    """The compiled form of ``booster``, from the cache in ``directory`` or compiled now.

    ``label`` (e.g. ``churn_model-v3``) only makes the cached file names readable; the cache key
    is the model text, the compiler versions and the host CPU.

    Raises:
        CompileError: lleaves or LLVM failed on this model.
    """
    import llvmlite.binding as llvm

    model_text = booster.model_to_string()
    key = hashlib.sha256(
        "\n".join(
            (
                model_text,
                package_version("lleaves"),
                package_version("llvmlite"),
                llvm.get_host_cpu_name(),
                _host_features(),
            )
        ).encode()
    ).hexdigest()[:16]
    stem = directory / f"{label}-{key}"
    forest = CompiledForest(model_file=stem.with_suffix(".txt"), binary=stem.with_suffix(".bin"))
    if forest.binary.exists() and forest.model_file.exists():
        return forest
    directory.mkdir(parents=True, exist_ok=True)
    # Two processes (Dask workers) may want the same forest: one compiles, the other waits.
    with file_lock(directory / f".{label}-{key}.lock"):
        if forest.binary.exists() and forest.model_file.exists():
            return forest
        with atomic_path(forest.model_file) as text_tmp:
            text_tmp.write_text(model_text)
        try:
            with atomic_path(forest.binary) as binary_tmp:
                _compile(forest.model_file, binary_tmp)
        except Exception as exc:  # lleaves/LLVM raise whatever they raise
            raise CompileError(f"could not compile {label} with lleaves: {exc}") from exc
    logger.info("compiled %s (%d trees) to %s", label, booster.num_trees(), forest.binary)
    return forest


def model_matrix(frame: pa.Table, spec: ModelSpec) -> np.ndarray:
    """The model's inputs as one C-ordered float64 matrix, the spec's features in the spec's order.

    The same values LightGBM derives from :func:`tasks.train.model_inputs`: numeric features as
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


def _host_features() -> str:
    import llvmlite.binding as llvm

    try:
        return llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot tell on some hosts; the CPU name still keys the cache
        return ""


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
