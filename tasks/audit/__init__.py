"""Audit: the append-only prediction log, its checksum ledger, and read-only SQL for auditors.

Takes in the prediction rows of nightly scoring and of the online endpoint; produces Parquet
files under ``$CHURN_HOME/predictions/``, a ledger that detects tampering, and the SQL views.
Written by ``score-nightly`` and ``churn serve``; read by ``churn audit`` and realized performance.
"""
