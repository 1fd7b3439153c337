"""Data: the source tables, simulated or imported, and the contracts they must pass.

Takes in a simulated world (``churn simulate``) or a user's CSV/Parquet export (``churn import``).
Produces the six source tables under ``$CHURN_HOME/source/``; an import is checked by the tables'
data contracts before anything is written, and ``build-features`` checks every source first.
"""
