"""The models of a night: the champion (and a shadow challenger) by alias, checked and compiled.

:func:`resolve_models` loads the ``champion`` alias (:class:`NoChampion` when there is none) and
the ``challenger`` as a shadow when it is another version; each model's inputs are checked
against the feature service's columns (:func:`check_signature`) and, with the compiled predictor
(the default), each gets its compiled trees.
:func:`compile_for_scoring` compiles a version as retraining registers it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import lightgbm as lgb
import numpy as np

from tasks.audit.log_schema import CHAMPION, SHADOW
from tasks.core.errors import ChurnError
from tasks.core.settings import Settings
from tasks.scoring.compiled import (
    TOLERANCE,
    CompiledForest,
    CompileError,
    compile_forest,
    disagreement,
)
from tasks.training.mlflow_store import CHALLENGER, ModelNotFound
from tasks.training.mlflow_store import CHAMPION as CHAMPION_ALIAS
from tasks.training.model_spec import ModelSpec
from tasks.training.registry import current_alias, load_model

logger = logging.getLogger(__name__)


class NoChampion(ChurnError):
    """There is no champion to score with."""


class ModelSignatureError(ChurnError):
    """A model's inputs do not match the feature service's columns."""


@dataclass(frozen=True)
class ScoringModel:
    """A registered model loaded once for the night: its booster, input spec and role."""

    name: str
    version: int
    role: str  # champion | shadow
    booster: lgb.Booster
    spec: ModelSpec
    compiled: CompiledForest | None = None
    """The booster compiled to native code; None scores with LightGBM's predict."""

    def predict(self, matrix: np.ndarray, threads: int) -> tuple[np.ndarray, str]:
        """Probabilities for ``matrix`` and what computed them (``compiled`` or ``lightgbm``).

        Compiled probabilities are held to LightGBM's on a sample of the rows; beyond
        :data:`tasks.scoring.compiled.TOLERANCE` the booster scores the rows instead (and says why).
        """
        if len(matrix) == 0:  # nothing to score: say what would have scored it
            return np.empty(0), "compiled" if self.compiled is not None else "lightgbm"
        if self.compiled is not None:
            try:
                p = self.compiled.predict(matrix, threads)
            except CompileError as exc:  # a worker host that needed its own binary
                logger.warning("%s; scoring these rows of v%d with LightGBM", exc, self.version)
                return self._booster_predict(matrix, threads), "lightgbm (compile failed)"
            gap = disagreement(p, self.booster, matrix)
            if gap <= TOLERANCE:
                return p, "compiled"
            logger.warning(
                "the compiled v%d differs from LightGBM by %.2e on sampled rows (tolerance "
                "%.0e): scoring these rows with LightGBM",
                self.version,
                gap,
                TOLERANCE,
            )
            return self._booster_predict(matrix, threads), f"lightgbm (compiled off by {gap:.1e})"
        return self._booster_predict(matrix, threads), "lightgbm"

    def _booster_predict(self, matrix: np.ndarray, threads: int) -> np.ndarray:
        return np.asarray(self.booster.predict(matrix, num_threads=threads), dtype=np.float64)


def check_signature(model_name: str, version: int, spec: ModelSpec, features: list[str]) -> None:
    """The model must take exactly the feature service's columns (order aside).

    Raises:
        ModelSignatureError: naming the inputs the service lacks and the ones the model ignores.
    """
    missing = [f for f in spec.features if f not in features]
    unused = [f for f in features if f not in spec.features]
    if missing or unused:
        parts = []
        if missing:
            parts.append(f"the feature service lacks {', '.join(missing)}")
        if unused:
            parts.append(f"the model does not take {', '.join(unused)}")
        raise ModelSignatureError(
            f"{model_name} version {version} does not match the feature service: "
            + "; ".join(parts)
        )


def resolve_models(settings: Settings, features: list[str]) -> list[ScoringModel]:
    """The champion, plus the challenger in shadow when there is one and it is another version.

    Raises:
        NoChampion: the registry has no champion (nothing is scored then).
        ModelSignatureError: a model's inputs differ from the feature service's columns.
        ModelLoadError: a model cannot be loaded.
    """
    name = settings.model_name
    champion = current_alias(settings, CHAMPION_ALIAS)
    if champion is None:
        raise NoChampion(
            f"{name} has no champion: nothing scored; train one with `churn train --as-of D` "
            "(or promote a version with `churn model promote`)"
        )
    models = [_load(settings, CHAMPION_ALIAS, CHAMPION, features)]
    challenger = current_alias(settings, CHALLENGER)
    if challenger is not None and challenger.version != models[0].version:
        models.append(_load(settings, challenger.version, SHADOW, features))
    if settings.score_predictor == "compiled":
        models = [_with_compiled(settings, m) for m in models]
    return models


def compile_for_scoring(settings: Settings, version: int) -> CompiledForest | None:
    """Compile a registered version into the scoring cache now (retraining does, so the night
    after a new version finds it ready); None where compiling is off or fails (a warning: the
    night then compiles it, or scores with LightGBM)."""
    if settings.score_predictor != "compiled":
        return None
    try:
        booster, spec, _ = load_model(settings, version)
    except ChurnError as exc:
        logger.warning("version %d not compiled for scoring: %s", version, exc)
        return None
    model = ScoringModel(settings.model_name, version, SHADOW, booster, ModelSpec.from_dict(spec))
    return _with_compiled(settings, model).compiled


def _with_compiled(settings: Settings, model: ScoringModel) -> ScoringModel:
    """``model`` with its compiled forest (cached per version); as is if compiling fails."""
    try:
        forest = compile_forest(
            model.booster, settings.compiled_models_dir, f"{model.name}-v{model.version}"
        )
    except CompileError as exc:
        logger.warning("%s; scoring v%d with LightGBM's predict", exc, model.version)
        return model
    return replace(model, compiled=forest)


def _load(settings: Settings, which: str | int, role: str, features: list[str]) -> ScoringModel:
    try:
        booster, spec_dict, version = load_model(settings, which)
    except ModelNotFound as exc:  # the alias moved between listing and loading
        raise NoChampion(str(exc)) from exc
    spec = ModelSpec.from_dict(spec_dict)
    check_signature(settings.model_name, version, spec, features)
    return ScoringModel(settings.model_name, version, role, booster, spec)
