"""Feature views, named by entity, topic and window.

Each field's ``tags`` carry its data-contract range (``min``/``max``) and whether nulls are
allowed, so the contract on a feature table is read from this one declaration.
The TTL of one day lets a scoring run fall back to yesterday's snapshot if today's build is
missing, and never further: older values are treated as absent, as Feast defines.
"""

from datetime import timedelta

from data_sources import (
    _daily_table,
    subscriber_billing_90d_source,
    subscriber_profile_source,
    subscriber_support_30d_source,
    subscriber_usage_30d_source,
)
from entities import subscriber
from feast import FeatureView, Field
from feast.types import Float32, Int32, String

_OWNER = "ml-platform@churn-ops"
_TTL = timedelta(days=1)


def _count(name: str, description: str) -> Field:
    return Field(name=name, dtype=Int32, description=description, tags={"min": "0"})


subscriber_profile = FeatureView(
    name="subscriber_profile",
    entities=[subscriber],
    ttl=_TTL,
    source=subscriber_profile_source,
    online=True,
    description="Plan, contract and charges as of the snapshot day.",
    owner=_OWNER,
    tags={"topic": "profile", "window": "point"},
    schema=[
        Field(name="tenure_days", dtype=Int32, description="Days since signup.", tags={"min": "0"}),
        Field(
            name="plan",
            dtype=String,
            description="Current plan.",
            tags={"allowed": "basic,standard,premium,unlimited"},
        ),
        Field(
            name="contract_type",
            dtype=String,
            description="Contract length.",
            tags={"allowed": "month_to_month,one_year,two_year"},
        ),
        Field(
            name="payment_method",
            dtype=String,
            description="How bills are paid.",
            tags={"allowed": "autopay,card,invoice"},
        ),
        Field(
            name="monthly_charge",
            dtype=Float32,
            description="Current monthly charge (USD).",
            tags={"min": "0", "max": "500"},
        ),
        Field(
            name="charge_to_list_ratio",
            dtype=Float32,
            description="Monthly charge over the plan's list price (>1: pays more than list).",
            tags={"min": "0", "max": "10"},
        ),
        Field(
            name="charge_change_90d",
            dtype=Float32,
            description="Monthly charge now minus 90 days ago (or at signup if later).",
            tags={"min": "-500", "max": "500"},
        ),
        _count("plan_changes_90d", "Plan or price changes in the last 90 days."),
    ],
)

subscriber_usage_30d = FeatureView(
    name="subscriber_usage_30d",
    entities=[subscriber],
    ttl=_TTL,
    source=subscriber_usage_30d_source,
    online=True,
    description="Data, voice and network quality over the last 7 and 30 days.",
    owner=_OWNER,
    tags={"topic": "usage", "window": "30d"},
    schema=[
        Field(
            name="data_gb_7d",
            dtype=Float32,
            description="Data used in the last 7 days (GB).",
            tags={"min": "0"},
        ),
        Field(
            name="data_gb_30d",
            dtype=Float32,
            description="Data used in the last 30 days (GB).",
            tags={"min": "0"},
        ),
        Field(
            name="data_trend_7d_30d",
            dtype=Float32,
            description="Daily data use over the last 7 days relative to the last 30 (<1: falling); null without use.",
            tags={"min": "0", "nullable": "true"},
        ),
        Field(
            name="voice_minutes_7d",
            dtype=Float32,
            description="Voice minutes in the last 7 days.",
            tags={"min": "0"},
        ),
        Field(
            name="voice_minutes_30d",
            dtype=Float32,
            description="Voice minutes in the last 30 days.",
            tags={"min": "0"},
        ),
        _count("dropped_calls_30d", "Dropped calls in the last 30 days."),
        Field(
            name="active_days_30d",
            dtype=Int32,
            description="Days with usage recorded in the last 30 days.",
            tags={"min": "0", "max": "30"},
        ),
    ],
)

subscriber_support_30d = FeatureView(
    name="subscriber_support_30d",
    entities=[subscriber],
    ttl=_TTL,
    source=subscriber_support_30d_source,
    online=True,
    description="Support tickets opened over the last 7 and 30 days.",
    owner=_OWNER,
    tags={"topic": "support", "window": "30d"},
    schema=[
        _count("support_calls_7d", "Support tickets opened in the last 7 days."),
        _count("support_calls_30d", "Support tickets opened in the last 30 days."),
        _count("network_tickets_30d", "Network-quality tickets opened in the last 30 days."),
    ],
)

subscriber_billing_90d = FeatureView(
    name="subscriber_billing_90d",
    entities=[subscriber],
    ttl=_TTL,
    source=subscriber_billing_90d_source,
    online=True,
    description="Bills and late payments over the last 90 days (a bill counts as late from its due date + 1).",
    owner=_OWNER,
    tags={"topic": "billing", "window": "90d"},
    schema=[
        _count("late_payments_90d", "Bills known to be paid late in the last 90 days."),
        _count("bills_90d", "Bills issued in the last 90 days."),
    ],
)


subscriber_usage_90d_source = _daily_table(
    "subscriber_usage_90d",
    "Daily 90-day usage per subscriber relative to their own baseline (days d-89 .. d-30).",
)


def _per_day(name: str, description: str, most: str) -> Field:
    return Field(
        name=name,
        dtype=Float32,
        description=description,
        tags={"min": "0", "max": most, "nullable": "true"},
    )


def _ratio(name: str, description: str) -> Field:
    # No natural upper bound: a loose one catches unit and join mistakes, not heavy users.
    return Field(
        name=name,
        dtype=Float32,
        description=description,
        tags={"min": "0", "max": "1000", "nullable": "true"},
    )


_BASELINE = "the subscriber's own use per day over days d-89 .. d-30"
_BASELINE_7 = "the subscriber's own use per day over days d-89 .. d-7"
_NULL = "null without a usage row in either window (in service 30 days or less) or a zero baseline"

subscriber_usage_90d = FeatureView(
    name="subscriber_usage_90d",
    entities=[subscriber],
    ttl=_TTL,
    source=subscriber_usage_90d_source,
    online=True,
    description=(
        "Recent data and voice use relative to the subscriber's own 90-day baseline "
        "(per day with a usage row; <1: using less than usual)."
    ),
    owner=_OWNER,
    tags={"topic": "usage", "window": "90d"},
    schema=[
        _per_day(
            "data_gb_per_day_90d",
            "Data per day with usage over the last 90 days (GB); null without usage.",
            "1000",
        ),
        _per_day(
            "voice_minutes_per_day_90d",
            "Voice minutes per day with usage over the last 90 days; null without usage.",
            "1440",
        ),
        _ratio(
            "data_ratio_30d_baseline",
            f"Data per day over the last 30 days relative to {_BASELINE}; {_NULL}.",
        ),
        _ratio(
            "data_ratio_14d_baseline",
            f"Data per day over the last 14 days relative to {_BASELINE}; {_NULL}.",
        ),
        _ratio(
            "data_ratio_7d_baseline",
            f"Data per day over the last 7 days relative to {_BASELINE_7}; {_NULL}.",
        ),
        _ratio(
            "voice_ratio_30d_baseline",
            f"Voice minutes per day over the last 30 days relative to {_BASELINE}; {_NULL}.",
        ),
        _ratio(
            "voice_ratio_14d_baseline",
            f"Voice minutes per day over the last 14 days relative to {_BASELINE}; {_NULL}.",
        ),
        _ratio(
            "voice_ratio_7d_baseline",
            f"Voice minutes per day over the last 7 days relative to {_BASELINE_7}; {_NULL}.",
        ),
        _ratio(
            "usage_ratio_30d_baseline",
            "Geometric mean of the 30-day data and voice ratios; null if either is.",
        ),
        _ratio(
            "usage_ratio_14d_baseline",
            "Geometric mean of the 14-day data and voice ratios; null if either is.",
        ),
        _ratio(
            "usage_ratio_7d_baseline",
            "Geometric mean of the 7-day data and voice ratios; null if either is.",
        ),
    ],
)
