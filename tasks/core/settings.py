"""The one typed settings object: environment variables with the ``CHURN_`` prefix.

Built on demand through :func:`get_settings`, never at import time, so a test or a
subprocess can point ``CHURN_HOME`` somewhere else before anything reads it.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
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
        default="churn_model_v2", description="Feast feature service of model inputs."
    )
    training_recency_half_life_days: float | None = Field(
        default=30.0,
        gt=0,
        description="Weight each training snapshot by 0.5 ** (its age in days / this), the age "
        "counted from the newest training snapshot; off (None): every snapshot weighs the same. "
        "The default was chosen by the backtest (README, Does retraining pay off?).",
    )
    feature_definitions: Path | None = Field(
        default=None,
        description="Feature definitions file to use instead of feature_repo/features.yaml "
        "(for example one that includes it and adds your own features and services).",
    )

    # Feast.
    online_write_batch_size: int = Field(
        default=10_000, ge=100, description="Rows per online-store write while materializing."
    )

    duckdb_memory_limit: str = Field(
        default="4GB",
        description="Memory DuckDB may use while building feature tables; beyond it, it spills to disk.",
    )
    feature_shard_subscribers: int = Field(
        default=2_000_000,
        ge=1,
        description="Subscriber ids per shard of a feature build (contiguous ranges, built apart "
        "and published together); peak memory follows this, not the base size.",
    )
    feature_runner: str = Field(
        default="local",
        pattern="^(local|dask)$",
        description="Build a feature chunk's shards in this process, one after the other, or on "
        "the Dask cluster at CHURN_DASK_ADDRESS (a LocalCluster when unset; workers need "
        "CHURN_HOME at the same path).",
    )
    feature_state_days: int = Field(
        default=3,
        ge=1,
        description="Newest snapshot days whose usage-window state is kept beside the feature "
        "tables, so the next day (or a rerun of a recent one) is built incrementally; "
        "about 35 MB a day per million subscribers.",
    )

    # Data contracts.
    volume_tolerance: float = Field(
        default=0.2,
        gt=0,
        description="Largest relative change in a day's row count versus the previous day.",
    )

    # Retraining (issue 3): split, model, gates, promotion.
    holdout_snapshots: int = Field(
        default=2,
        ge=1,
        description="Newest mature snapshot days held out for out-of-time evaluation.",
    )
    validation_snapshots: int = Field(
        default=2,
        ge=1,
        description="Snapshot days just before the holdout used for early stopping.",
    )
    model_seed: int = Field(default=42, description="Seed of every random choice in training.")
    model_threads: int = Field(
        default=2, ge=1, description="LightGBM threads (fixed: same data, same model)."
    )
    model_max_rounds: int = Field(default=600, ge=10, description="Most boosting rounds.")
    model_early_stopping_rounds: int = Field(
        default=50, ge=5, description="Stop after this many rounds without gain."
    )
    model_learning_rate: float = Field(default=0.05, gt=0, le=1)
    model_num_leaves: int = Field(default=31, ge=2)
    model_min_child_samples: int = Field(default=100, ge=1)
    retention_capacity: int = Field(
        default=500, ge=1, description="Subscribers the retention team can call per day (top K)."
    )
    gate_min_auc: float = Field(
        default=0.65,
        description="Absolute floor on holdout ROC-AUC: clearly better than guessing; the champion margin does the rest.",
    )
    gate_max_calibration_error: float = Field(
        default=0.05, description="Absolute ceiling on expected calibration error."
    )
    gate_auc_margin: float = Field(
        default=0.002, description="Holdout ROC-AUC the challenger must add over the champion."
    )
    gate_calibration_tolerance: float = Field(
        default=0.01,
        description="How much worse the challenger's calibration error may be than the champion's.",
    )
    fairness_min_dp_ratio: float = Field(
        default=0.6,
        description="Demographic-parity ratio (selection rates at the operating threshold) "
        "below which a credible disparity fails: its whole interval must lie below.",
    )
    fairness_max_eo_difference: float = Field(
        default=0.25,
        description="Equalized-odds difference above which a credible disparity fails: its "
        "whole interval must lie above.",
    )
    fairness_min_group_size: int = Field(
        default=200,
        ge=1,
        description="Smaller groups are reported as too small to judge, never passed silently.",
    )
    fairness_min_selected_per_group: int = Field(
        default=30,
        ge=1,
        description="Fewest selections a group would get at the overall selection rate (its rows "
        "x the share selected) to be judged; fewer: reported as not judged, not failed.",
    )
    fairness_confidence: float = Field(
        default=0.95,
        gt=0.5,
        lt=1.0,
        description="Simultaneous confidence of each attribute's fairness intervals.",
    )
    fairness_regression_margin: float = Field(
        default=0.05,
        ge=0,
        description="How far the candidate's whole fairness interval must lie on the worse side "
        "of the champion's value (same holdout) to be refused as a regression.",
    )
    promotion_mode: str = Field(
        default="immediate",
        pattern="^(immediate|shadow|approval)$",
        description="After the gates: promote at once, keep as challenger (shadow), or wait for a person.",
    )
    approval_timeout_hours: float = Field(
        default=72.0,
        gt=0,
        description="In approval mode, how long the retrain flow waits for a person before it "
        "leaves the candidate as challenger.",
    )
    trainer: str = Field(
        default="local",
        pattern="^(local|dask)$",
        description="Where LightGBM trains: in this process, or with lightgbm.dask on a Dask cluster.",
    )
    dask_address: str | None = Field(
        default=None,
        description="Scheduler of an existing Dask cluster (tcp://host:8786); unset with a Dask "
        "trainer or task runner: a LocalCluster on this machine.",
    )
    model_name: str = Field(
        default="telecom_churn_model", description="Registered model name in MLflow."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI the clients use (a tracking server, or a database); "
        "default: the backend store below.",
    )

    # Production backends (issue 14). Unset: the embedded defaults under $CHURN_HOME. URLs that
    # can carry a password are secrets: shown only through tasks.core.urls.redact_url.
    prefect_database_url: SecretStr | None = Field(
        default=None,
        description="Database of the Prefect server `churn up` starts (postgresql://user:pw@host/db; "
        "passed on as PREFECT_SERVER_DATABASE_CONNECTION_URL); default: SQLite under "
        "$CHURN_HOME/prefect (secret).",
    )
    mlflow_backend_uri: SecretStr | None = Field(
        default=None,
        description="MLflow backend store, registry included (postgresql://user:pw@host/db); "
        "default: SQLite under $CHURN_HOME/mlflow (secret).",
    )
    mlflow_artifacts: str | None = Field(
        default=None,
        description="Where MLflow keeps run artifacts and models: a folder every process can "
        "reach, or s3://bucket/prefix; default: $CHURN_HOME/mlflow/artifacts.",
    )
    online_store: str = Field(
        default="sqlite",
        pattern="^(sqlite|redis)$",
        description="Feast online store: SQLite under $CHURN_HOME/feast, or Redis at CHURN_REDIS_URL.",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="Redis of the online store with CHURN_ONLINE_STORE=redis "
        "(redis://[:pw@]host:6379/0, rediss:// for TLS) (secret).",
    )

    # Nightly scoring (issue 4).
    timezone: str = Field(
        default="UTC",
        description="Business time zone: the default score date is yesterday there.",
    )
    score_shard_rows: int = Field(
        default=500_000,
        ge=1_000,
        description="Subscribers per scoring shard; peak memory follows this, not the base size.",
    )
    score_task_runner: str = Field(
        default="local",
        pattern="^(local|dask)$",
        description="Run scoring shards in this process, or fan them out over Dask (prefect-dask).",
    )
    score_predictor: str = Field(
        default="compiled",
        pattern="^(compiled|lightgbm)$",
        description=(
            "Score with the booster compiled to native code by lleaves (same probabilities, "
            "checked on every shard, 3.5-3.8x faster in bench/score.py), or with LightGBM's own predict."
        ),
    )
    risk_high_threshold: float = Field(
        default=0.10, gt=0, lt=1, description="Probability from which a subscriber is tier 'high'."
    )
    risk_medium_threshold: float = Field(
        default=0.04,
        gt=0,
        lt=1,
        description="Probability from which a subscriber is tier 'medium'.",
    )
    reason_codes: int = Field(
        default=3, ge=1, le=10, description="Reasons given per subscriber in the high-risk file."
    )

    # Monitoring (issue 5): drift thresholds are effect sizes; p-values are only reported.
    drift_psi_warn: float = Field(
        default=0.10, gt=0, description="PSI from which a feature 'warns'."
    )
    drift_psi_alert: float = Field(
        default=0.25, gt=0, description="PSI from which a feature 'alerts'."
    )
    drift_ks_warn: float = Field(
        default=0.10, gt=0, le=1, description="KS statistic from which a numeric feature 'warns'."
    )
    drift_ks_alert: float = Field(
        default=0.12,
        gt=0,
        le=1,
        description="KS statistic from which a numeric feature 'alerts' (calibrated on the "
        "simulator: usage_shift and price_shock alert on their first day, 78 baseline days stay "
        "quiet; tenure ageing reaches 0.09 by day 78).",
    )
    drift_retrain_features: int = Field(
        default=2,
        ge=1,
        description="Alerting features (or a shifted prediction distribution) from which the day's "
        "severity is 'retrain'.",
    )
    drift_reference_rows: int = Field(
        default=200_000,
        ge=1_000,
        description="Rows of the training window kept as the reference sample of a model version.",
    )
    drift_cooldown_days: int = Field(
        default=7,
        ge=0,
        description="At most one drift-triggered retrain per model version within this many days.",
    )
    drift_follow_up: bool = Field(
        default=True,
        description="When drift asks for retraining, also schedule the follow-up retraining for "
        "the day enough post-shift labels have matured (tasks/monitoring/follow_up.py).",
    )
    incident_quiet_nights_to_resolve: int = Field(
        default=3,
        ge=1,
        description="Consecutive nights below the warning thresholds that resolve a drift "
        "incident (tasks/monitoring/incident.py).",
    )
    performance_auc_tolerance: float = Field(
        default=0.05,
        ge=0,
        description="Alert when the champion's realized AUC falls this far below its holdout AUC.",
    )

    # Alerts (Slack). Secrets: never logged, never in artifacts or errors.
    slack_webhook_url: SecretStr | None = Field(
        default=None, description="Slack incoming webhook URL (secret)."
    )
    slack_bot_token: SecretStr | None = Field(
        default=None, description="Slack bot token (secret), used with slack_channel."
    )
    slack_channel: str | None = Field(default=None, description="Channel for the bot token.")
    alert_max_attempts: int = Field(
        default=4, ge=1, description="Delivery attempts per alert and run (retries with backoff)."
    )
    alert_backoff_seconds: float = Field(
        default=1.0, ge=0, description="First retry delay; doubles each attempt."
    )
    prefect_ui_url: str | None = Field(
        default=None,
        description="Prefect UI base URL (http://127.0.0.1:4200) for links to flow runs in alerts.",
    )

    # Online scoring endpoint (issue 7).
    api_key: SecretStr | None = Field(
        default=None, description="When set, /predict requires it in the X-API-Key header."
    )
    online_flush_rows: int = Field(
        default=1_000, ge=1, description="Online predictions buffered before a log flush."
    )
    online_flush_seconds: float = Field(
        default=5.0, gt=0, description="Longest an online prediction waits in the buffer."
    )
    model_reload_seconds: float = Field(
        default=30.0, gt=0, description="How often the endpoint checks whether the champion moved."
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

    @field_validator("feature_definitions")
    @classmethod
    def _absolute_definitions(cls, value: Path | None) -> Path | None:
        # `feast apply` imports the repo from inside feature_repo/: a relative path must not
        # change meaning there.
        return value.expanduser().resolve() if value is not None else None

    @field_validator("training_recency_half_life_days", mode="before")
    @classmethod
    def _equal_weights_by_name(cls, value: object) -> object:
        # An environment variable cannot be unset by a deployment's job variables, so equal
        # weights also have a name.
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _tiers_ordered(self) -> Settings:
        if self.risk_medium_threshold >= self.risk_high_threshold:
            raise ValueError(
                f"risk_medium_threshold ({self.risk_medium_threshold}) must be below "
                f"risk_high_threshold ({self.risk_high_threshold})"
            )
        return self

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
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def predictions_dir(self) -> Path:
        """The append-only prediction log (DESIGN §5)."""
        return self.home / "predictions"

    @property
    def retention_dir(self) -> Path:
        """The retention team's daily high-risk files."""
        return self.home / "retention"

    @property
    def monitoring_dir(self) -> Path:
        return self.home / "monitoring"

    @property
    def alerts_dir(self) -> Path:
        return self.home / "alerts"

    @property
    def compiled_models_dir(self) -> Path:
        """Models compiled for scoring (a cache: deleting it costs a recompile per version)."""
        return self.home / "cache" / "compiled"

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
