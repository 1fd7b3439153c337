"""The champion as the endpoint scores with it: one row in, probability, tier, threshold, reasons.

:class:`ChampionModel` turns one subscriber's values into the float64 row LightGBM builds from
``tasks.training.model_spec.model_inputs`` (so a probability is bit for bit the batch path's), and
:func:`load_champion` loads the alias with its operating threshold (the holdout metric
``operating_threshold``, else ``risk_high_threshold``, said in ``threshold_source``). The HTTP
layer's request models are here too (the feature values one, built from the feature service);
its response models are in ``flows/serve.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from tasks.core.settings import Settings
from tasks.features.frames import ViewRead
from tasks.scoring.models import NoChampion, check_signature
from tasks.scoring.reasons import reason_text
from tasks.serving.reader import Freshness, iso_or_none, utc_now
from tasks.training.mlflow_store import CHAMPION
from tasks.training.model_spec import ModelSpec
from tasks.training.registry import ModelVersionInfo, current_alias, load_model

logger = logging.getLogger(__name__)

THRESHOLD_METRIC = "operating_threshold"


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ChampionModel:
    """A registered version loaded for online scoring, with what a one-row predict needs."""

    name: str
    version: int
    run_id: str | None
    booster: lgb.Booster
    spec: ModelSpec
    threshold: float
    threshold_source: str
    loaded_at: datetime
    _encoders: tuple[tuple[str, dict[str, int] | None, frozenset[str]], ...] = field(repr=False)

    @classmethod
    def build(
        cls,
        name: str,
        version: int,
        run_id: str | None,
        booster: lgb.Booster,
        spec: ModelSpec,
        threshold: float,
        threshold_source: str,
        loaded_at: datetime,
    ) -> ChampionModel:
        # model_inputs makes a pandas Categorical over the spec's categories; LightGBM then maps
        # it onto the categories it was trained with (pandas_categorical) and uses the codes.
        trained = booster.pandas_categorical or [spec.categories[f] for f in spec.categorical]
        categorical = [f for f in spec.features if f in set(spec.categorical)]
        codes = {
            f: {str(v): i for i, v in enumerate(values)}
            for f, values in zip(categorical, trained, strict=True)
        }
        encoders = tuple(
            (
                f,
                {v: codes[f][v] for v in spec.categories[f] if v in codes[f]}
                if f in codes
                else None,
                frozenset(spec.categories.get(f, ())),
            )
            for f in spec.features
        )
        return cls(
            name,
            version,
            run_id,
            booster,
            spec,
            threshold,
            threshold_source,
            loaded_at,
            encoders,
        )

    def inputs(self, values: Mapping[str, Any]) -> tuple[np.ndarray, list[Any]]:
        """The one-row matrix LightGBM predicts on, and each input as ``top_reasons`` shows it."""
        row = np.empty((1, len(self._encoders)), dtype=np.float64)
        shown: list[Any] = []
        for j, (name, codes, known) in enumerate(self._encoders):
            value = values.get(name)
            if codes is None:
                number = math.nan if value is None else float(np.float32(value))
                row[0, j] = number
                shown.append(None if math.isnan(number) else number)
            else:
                seen = value is not None and value in known
                row[0, j] = codes.get(value, math.nan) if seen else math.nan
                shown.append(value if seen else None)
        return row, shown

    def probability(self, row: np.ndarray) -> float:
        return float(self.booster.predict(row, num_threads=1)[0])

    def reasons(self, row: np.ndarray, shown: list[Any], count: int) -> list[str]:
        """Up to ``count`` plain-word reasons, as ``tasks.scoring.reasons.top_reasons`` gives them."""
        contrib = np.asarray(
            self.booster.predict(row, pred_contrib=True, num_threads=1), dtype=np.float64
        )[0, :-1]
        order = np.argsort(-contrib, kind="stable")[:count]
        return [reason_text(self._encoders[j][0], shown[j]) for j in order if contrib[j] > 0]


def load_champion(
    settings: Settings, features: list[str], info: ModelVersionInfo | None = None
) -> ChampionModel:
    """The version the champion alias points at (or ``info``), ready for one-row scoring.

    Raises:
        NoChampion: the registry has no champion.
        ModelSignatureError: its inputs differ from the feature service's columns.
        ModelLoadError: it cannot be loaded.
    """
    info = info or current_alias(settings, CHAMPION)
    if info is None:
        raise NoChampion(
            f"{settings.model_name} has no champion: nothing to serve; train one with "
            "`churn train --as-of D` (or promote a version with `churn model promote`)"
        )
    booster, spec_dict, version = load_model(settings, info.version)
    spec = ModelSpec.from_dict(spec_dict)
    check_signature(settings.model_name, version, spec, features)
    threshold = info.metrics.get(THRESHOLD_METRIC)
    if threshold is not None and 0 < threshold < 1:
        source = f"holdout {THRESHOLD_METRIC} of run {info.run_id}"
    else:
        threshold = settings.risk_high_threshold
        source = f"risk_high_threshold setting (version {version} has no {THRESHOLD_METRIC})"
    logger.info(
        "loaded %s version %s for online scoring (threshold %.4f: %s)",
        settings.model_name,
        version,
        threshold,
        source,
    )
    return ChampionModel.build(
        settings.model_name,
        version,
        info.run_id,
        booster,
        spec,
        float(threshold),
        source,
        utc_now(),
    )


def risk_tier(p: float, medium: float, high: float) -> str:
    """``tasks.scoring.shards.risk_tiers`` for one probability (thresholds inclusive)."""
    return "high" if p >= high else "medium" if p >= medium else "low"


# ----------------------------------------------------------------------------- request schema


_INT32_MAX = 2**31 - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def feature_values_model(reads: list[ViewRead]) -> type[BaseModel]:
    """A pydantic model of the feature service's values, with each view's contract as rules.

    Every feature is required (``null`` only where the contract allows it); numbers must lie in
    the contract's range (and fit the Feast type), strings must be one of the allowed values;
    unknown names are refused. Errors name the field.
    """
    fields: dict[str, Any] = {}
    for read in reads:
        contract = {c.name: c for c in read.contract.columns}
        for name, dtype in zip(read.columns, read.dtypes, strict=True):
            column = contract.get(name)
            nullable = column is None or column.nullable
            rules: dict[str, Any] = {"description": f"{read.name}: {dtype}"}
            if column is not None and column.allowed:
                kind: Any = Literal[tuple(column.allowed)]  # type: ignore[valid-type]
            elif dtype in ("Int32", "Int64"):
                kind = int
                low, high = (-_INT32_MAX - 1, _INT32_MAX) if dtype == "Int32" else (None, None)
                if column is not None and column.min is not None:
                    low = math.ceil(column.min)
                if column is not None and column.max is not None:
                    high = math.floor(column.max)
                rules |= {"ge": low, "le": high}
            elif dtype in ("Float32", "Float64"):
                kind = float
                rules["allow_inf_nan"] = False
                rules["ge"] = column.min if column and column.min is not None else -_FLOAT32_MAX
                rules["le"] = column.max if column and column.max is not None else _FLOAT32_MAX
            elif dtype == "Bool":
                kind = bool
            else:
                kind = str
            rules = {k: v for k, v in rules.items() if v is not None}
            annotation = kind | None if nullable else kind
            fields[name] = (annotation, Field(..., **rules))
    return create_model(  # type: ignore[call-overload]
        "FeatureValues",
        __config__=ConfigDict(extra="forbid", strict=False),
        **fields,
    )


class SubscriberRequest(BaseModel):
    """``POST /predict``: score a subscriber from the online store, named by its number or,
    where the import numbered customers by their own id, by that id."""

    model_config = ConfigDict(extra="forbid")
    # Declared first: subscriber_id's check below sees whether it was given.
    customer_key: str | None = Field(
        None,
        min_length=1,
        description="The customer's own id (customer_key at import), instead of subscriber_id.",
    )
    subscriber_id: int | None = Field(
        None, ge=1, le=2**63 - 1, validate_default=True, description="The subscriber to score."
    )

    @field_validator("subscriber_id")
    @classmethod
    def _one_name(cls, value: int | None, info: ValidationInfo) -> int | None:
        # Named against subscriber_id, so the 422 names a field.
        keyed = info.data.get("customer_key") is not None
        if value is None and not keyed:
            raise ValueError("give subscriber_id (or customer_key)")
        if value is not None and keyed:
            raise ValueError("give exactly one of subscriber_id or customer_key")
        return value


def features_request_model(reads: list[ViewRead]) -> type[BaseModel]:
    """``POST /predict/features``: a subscriber and the feature values to score it on."""
    return create_model(
        "FeaturesRequest",
        __config__=ConfigDict(extra="forbid"),
        subscriber_id=(int, Field(..., ge=1, le=2**63 - 1, description="Who is scored (logged).")),
        features=(feature_values_model(reads), Field(..., description="Every model input.")),
    )


# ----------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class OnlinePrediction:
    """One online prediction: what the caller gets back and what the log keeps."""

    prediction_id: str
    subscriber_id: int
    score_date: date
    scored_at: datetime
    probability: float
    will_churn: bool
    threshold: float
    risk_tier: str
    reasons: list[str]
    model_name: str
    model_version: int
    freshness: Freshness
    features: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The response body (feature values stay in the log)."""
        return {
            "prediction_id": self.prediction_id,
            "subscriber_id": self.subscriber_id,
            "scored_at": iso_or_none(self.scored_at),
            "probability": self.probability,
            "will_churn": self.will_churn,
            "operating_threshold": self.threshold,
            "risk_tier": self.risk_tier,
            "reasons": self.reasons,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "feature_freshness": self.freshness.to_dict(),
        }
