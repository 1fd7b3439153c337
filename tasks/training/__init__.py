"""Training: LightGBM on a rolling window, out-of-time evaluation, gates, MLflow registry.

Takes in the point-in-time training frame; produces an MLflow run per candidate (metrics, gates,
model card, charts) and, when every gate passes, a registered version with lineage and aliases.
Run by the ``retrain`` flow (``flows/retrain.py``: deployments retrain-weekly, retrain-on-drift).
"""
