"""Feature views, named by entity, topic and window; their schemas come from ``features.yaml``.

Each feature (its type, description, contract and reason words) is declared once, in
``features.yaml`` beside this file (``tasks/features/definitions.py`` reads it); a view here
says only what is true of the whole table: its source, TTL, description and tags. The contract
rides in each field's ``tags`` (``min``/``max``/``allowed``/``nullable``), where the feature
build reads it back. The TTL of one day lets a scoring run fall back to yesterday's snapshot if
today's build is missing, and never further: older values are treated as absent, as Feast defines.
"""

from datetime import timedelta
from pathlib import Path

from data_sources import (
    _daily_table,
    subscriber_billing_90d_source,
    subscriber_profile_source,
    subscriber_support_30d_source,
    subscriber_usage_30d_source,
)
from entities import subscriber
from feast import FeatureView

from tasks.core.settings import get_settings
from tasks.features.definitions import ATTRIBUTES_VIEW, DEFINITIONS_FILE, load_definitions

_OWNER = "ml-platform@churn-ops"
_TTL = timedelta(days=1)
# CHURN_FEATURE_DEFINITIONS may name a file of your own that includes this one.
DEFINITIONS = load_definitions(
    get_settings().feature_definitions or Path(__file__).with_name(DEFINITIONS_FILE)
)


subscriber_profile = FeatureView(
    name="subscriber_profile",
    entities=[subscriber],
    ttl=_TTL,
    source=subscriber_profile_source,
    online=True,
    description="Plan, contract and charges as of the snapshot day.",
    owner=_OWNER,
    tags={"topic": "profile", "window": "point"},
    schema=DEFINITIONS.fields("subscriber_profile"),
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
    schema=DEFINITIONS.fields("subscriber_usage_30d"),
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
    schema=DEFINITIONS.fields("subscriber_support_30d"),
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
    schema=DEFINITIONS.fields("subscriber_billing_90d"),
)


subscriber_usage_90d_source = _daily_table(
    "subscriber_usage_90d",
    "Daily 90-day usage per subscriber relative to their own baseline (days d-89 .. d-30).",
)

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
    schema=DEFINITIONS.fields("subscriber_usage_90d"),
)


# Only where the definitions use the attributes an import declared (`attributes:` in a mapping):
# a source without them has no such table to read.
if ATTRIBUTES_VIEW in DEFINITIONS.views:
    subscriber_attributes = FeatureView(
        name=ATTRIBUTES_VIEW,
        entities=[subscriber],
        ttl=_TTL,
        source=_daily_table(
            ATTRIBUTES_VIEW, "Daily imported subscriber attributes, as last observed."
        ),
        online=True,
        description=(
            "Subscriber attributes declared by an import (services, add-ons, household, …), "
            "as observed on or before the snapshot day (before the first observation: as first "
            "observed)."
        ),
        owner=_OWNER,
        tags={"topic": "attributes", "window": "point"},
        schema=DEFINITIONS.fields(ATTRIBUTES_VIEW),
    )
