"""Core: what every stage shares, and nothing stage-specific: settings, errors, paths, schema, SQL.

Takes in the ``CHURN_`` environment (one typed settings object, read on demand, never at import);
produces the data-root layout under ``$CHURN_HOME``, the source tables' schema, atomic file
writes, the one SQL loader for ``sql/``, and the error hierarchy. Used by every flow and stage.
"""
