"""Feature services: the versioned lists of model inputs, declared under ``services:`` in ``features.yaml``.

The service named by ``CHURN_FEATURE_SERVICE`` (default ``churn_model_v2``) is the one list used
by training, nightly scoring and online scoring alike. A change of inputs is a new service, never
an edit of an existing one: ``churn_model_v1`` stays as it was, so its models can still be scored.
Each service selects its features by name from each view (a projection), so a view that gains a
feature for a new service changes no existing one.
"""

import features as _features
from feast import FeatureService, FeatureView

from tasks.features.definitions import check_feast_views

DEFINITIONS = _features.DEFINITIONS
_VIEWS = {v.name: v for v in vars(_features).values() if isinstance(v, FeatureView)}
check_feast_views(DEFINITIONS, _VIEWS)


def _service(name: str) -> FeatureService:
    definition = DEFINITIONS.services[name]
    return FeatureService(
        name=name,
        features=[_VIEWS[view][names] for view, names in DEFINITIONS.projections(name)],
        description=definition.description,
        owner="ml-platform@churn-ops",
        tags={"model": "telecom_churn_model", "version": str(definition.version)},
    )


# Feast finds the objects of a repo as module attributes: one per service of features.yaml.
globals().update({name: _service(name) for name in DEFINITIONS.services})
