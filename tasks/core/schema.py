"""The source schema: the tables every data source (simulator or import) must produce.

One declaration serves the simulator (what to write), the importer (what to accept) and the
data contracts (what to check). Grain and keys are given per table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

PLANS: dict[str, float] = {"basic": 35.0, "standard": 55.0, "premium": 75.0, "unlimited": 95.0}
"""Plan name → list price per month (USD)."""
CONTRACT_TYPES = ("month_to_month", "one_year", "two_year")
REGIONS = ("north", "south", "east", "west", "central")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
GENDERS = ("female", "male", "unspecified")
PAYMENT_METHODS = ("autopay", "card", "invoice")
TICKET_CATEGORIES = ("network", "billing", "device", "other")
PLAN_CHANGE_REASONS = ("upgrade", "downgrade", "price_change")
CANCEL_REASONS = ("price", "service", "competitor", "moved", "other")

UNSPECIFIED = "unspecified"
"""A fairness group the data does not give (a telco export has no region or age band). Allowed in
``region``/``age_band`` but not in REGIONS/AGE_BANDS, which the simulator draws from."""

PROTECTED_ATTRIBUTES = ("age_band", "gender", "region")
"""Used only to evaluate fairness: never a model input."""


@dataclass(frozen=True)
class Column:
    """One column of a source table and the rules its values obey."""

    name: str
    type: pa.DataType
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    unique: bool = False


@dataclass(frozen=True)
class TableSpec:
    """A table (source or feature): its grain, the date column that places a row in time, and its columns."""

    name: str
    grain: str
    columns: tuple[Column, ...]
    date_column: str | None = None
    partitioned: bool = False
    """Written as a directory of Parquet files (one per chunk of days) instead of one file."""
    keys: tuple[str, ...] = field(default=())

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")


_ID = Column("subscriber_id", pa.int64(), min=1)

SUBSCRIBERS = TableSpec(
    name="subscribers",
    grain="one row per subscriber ever signed up",
    keys=("subscriber_id",),
    date_column="signup_date",
    columns=(
        Column("subscriber_id", pa.int64(), min=1, unique=True),
        Column("signup_date", pa.date32()),
        Column("plan", pa.string(), allowed=tuple(PLANS)),
        Column("contract_type", pa.string(), allowed=CONTRACT_TYPES),
        Column("payment_method", pa.string(), allowed=PAYMENT_METHODS),
        Column("monthly_charge", pa.float64(), min=0.0, max=500.0),
        Column("region", pa.string(), allowed=(*REGIONS, UNSPECIFIED)),
        Column("age_band", pa.string(), allowed=(*AGE_BANDS, UNSPECIFIED)),
        Column("gender", pa.string(), allowed=GENDERS),
    ),
)

USAGE_DAILY = TableSpec(
    name="usage_daily",
    grain="one row per active subscriber per day",
    keys=("subscriber_id", "usage_date"),
    date_column="usage_date",
    partitioned=True,
    columns=(
        _ID,
        Column("usage_date", pa.date32()),
        Column("data_gb", pa.float64(), min=0.0, max=1000.0),
        Column("voice_minutes", pa.float64(), min=0.0, max=1440.0),
        Column("dropped_calls", pa.int32(), min=0, max=500),
    ),
)

BILLING = TableSpec(
    name="billing",
    grain="one row per monthly bill",
    keys=("subscriber_id", "bill_date"),
    date_column="bill_date",
    columns=(
        _ID,
        Column("bill_date", pa.date32()),
        Column("due_date", pa.date32()),
        Column("amount", pa.float64(), min=0.0, max=5000.0),
        Column("days_late", pa.int32(), min=0, max=365),
    ),
)

SUPPORT_TICKETS = TableSpec(
    name="support_tickets",
    grain="one row per support ticket",
    keys=("ticket_id",),
    date_column="opened_date",
    columns=(
        Column("ticket_id", pa.int64(), min=1, unique=True),
        _ID,
        Column("opened_date", pa.date32()),
        Column("category", pa.string(), allowed=TICKET_CATEGORIES),
    ),
)

PLAN_CHANGES = TableSpec(
    name="plan_changes",
    grain="one row per change of plan or price",
    keys=("subscriber_id", "change_date"),
    date_column="change_date",
    columns=(
        _ID,
        Column("change_date", pa.date32()),
        Column("old_plan", pa.string(), allowed=tuple(PLANS)),
        Column("new_plan", pa.string(), allowed=tuple(PLANS)),
        Column("old_monthly_charge", pa.float64(), min=0.0, max=500.0),
        Column("new_monthly_charge", pa.float64(), min=0.0, max=500.0),
        Column("reason", pa.string(), allowed=PLAN_CHANGE_REASONS),
    ),
)

CANCELLATIONS = TableSpec(
    name="cancellations",
    grain="one row per subscriber who left; cancel_date is the first day without service",
    keys=("subscriber_id",),
    date_column="cancel_date",
    columns=(
        Column("subscriber_id", pa.int64(), min=1, unique=True),
        Column("cancel_date", pa.date32()),
        Column("reason", pa.string(), allowed=CANCEL_REASONS),
    ),
)

SOURCE_TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (SUBSCRIBERS, USAGE_DAILY, BILLING, SUPPORT_TICKETS, PLAN_CHANGES, CANCELLATIONS)
}

TRUE_CHURN_PROBABILITY = TableSpec(
    name="true_churn_probability",
    grain="one row per active subscriber per day (simulator only)",
    keys=("subscriber_id", "date"),
    date_column="date",
    partitioned=True,
    columns=(
        _ID,
        Column("date", pa.date32()),
        Column("true_churn_prob_30d", pa.float32(), min=0.0, max=1.0),
        # The same without the unobservable frailty and the protected age term: the observable oracle.
        Column("observable_churn_prob_30d", pa.float32(), min=0.0, max=1.0),
    ),
)
"""Ground truth the simulator knows and a model never sees; lives under ``$CHURN_HOME/truth``."""
