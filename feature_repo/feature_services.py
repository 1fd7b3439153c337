"""Feature services: the versioned lists of model inputs.

``churn_model_v1`` is the one list used by training, nightly scoring and online scoring alike.
A change of inputs is a new service (``churn_model_v2``), never an edit of this one.
"""

from feast import FeatureService
from features import (
    subscriber_billing_90d,
    subscriber_profile,
    subscriber_support_30d,
    subscriber_usage_30d,
)

churn_model_v1 = FeatureService(
    name="churn_model_v1",
    features=[
        subscriber_profile,
        subscriber_usage_30d,
        subscriber_support_30d,
        subscriber_billing_90d,
    ],
    description="Inputs of the telecom churn model, version 1 (20 features; protected attributes excluded).",
    owner="ml-platform@churn-ops",
    tags={"model": "telecom_churn_model", "version": "1"},
)
