"""Data: the source tables, simulated or imported, and the contracts they must pass.

Takes in a simulated world (``churn simulate``) or a user's CSV/Parquet export (``churn import``).
Produces the six source tables under ``$CHURN_HOME/source/``, each checked by its data contract.
Run by ``churn simulate`` / ``churn import``; the contracts also run inside ``build-features``.
"""
