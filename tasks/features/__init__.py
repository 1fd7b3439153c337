"""Features: daily feature tables, the Feast store over them, point-in-time frames.

Takes in the source tables; produces ``$CHURN_HOME/features/<table>/snapshot_date=…`` partitions,
the Feast registry and online store, and the training and scoring frames (no leakage).
Run by the ``build-features`` flow (``flows/features.py``); frames are read by retrain and scoring.
"""
