"""The one typed settings object: environment variables with the ``CHURN_`` prefix.

Built on demand through :func:`get_settings`, never at import time, so a test or a
subprocess can point ``CHURN_HOME`` somewhere else before anything reads it.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """Every tunable of churn-ops; each field can be set as ``CHURN_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CHURN_", extra="ignore")

    home: Path = Field(
        default=Path(".churn"),
        description="Data root: every piece of state lives below it (DESIGN §3).",
    )
    # Training window and label (DESIGN §4).
    label_horizon_days: int = Field(
        default=30, ge=1, description="churned_30d looks this far ahead."
    )
    training_window_days: int = Field(
        default=90, ge=7, description="Rolling training window length."
    )
    training_snapshot_every_days: int = Field(
        default=7,
        ge=1,
        description="Stride between training snapshots inside the window; daily snapshots of "
        "the same subscriber share 29 of 30 label days, so weekly keeps the signal at 1/7 the size.",
    )
    feature_service: str = Field(
        default="churn_model_v1", description="Feast feature service of model inputs."
    )

    # Feast.
    online_write_batch_size: int = Field(
        default=10_000, ge=100, description="Rows per online-store write while materializing."
    )

    duckdb_memory_limit: str = Field(
        default="4GB",
        description="Memory DuckDB may use while building feature tables; beyond it, it spills to disk.",
    )

    # Data contracts.
    volume_tolerance: float = Field(
        default=0.2,
        gt=0,
        description="Largest relative change in a day's row count versus the previous day.",
    )

    # Simulator defaults (the demo world).
    sim_chunk_days: int = Field(
        default=31, ge=1, description="Days of usage held in memory per Parquet file."
    )

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        # Feast's registry stores absolute paths; resolve once so every component agrees.
        return value.expanduser().resolve()

    # Paths under the data root (DESIGN §3).
    @property
    def source_dir(self) -> Path:
        return self.home / "source"

    @property
    def truth_dir(self) -> Path:
        """Simulator-only ground truth (true churn probabilities): evaluation input, never a feature."""
        return self.home / "truth"

    @property
    def features_dir(self) -> Path:
        return self.home / "features"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def feature_repo_dir(self) -> Path:
        return PROJECT_ROOT / "feature_repo"

    def training_window(self, as_of: date) -> tuple[date, date]:
        """First and last snapshot date whose label is mature at ``as_of`` (both inclusive)."""
        from datetime import timedelta

        last = as_of - timedelta(days=self.label_horizon_days)
        first = last - timedelta(days=self.training_window_days - 1)
        return first, last


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests and the CLI call this after changing the environment)."""
    get_settings.cache_clear()
