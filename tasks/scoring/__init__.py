"""Scoring: every subscriber in service scored nightly by the champion (and a shadow challenger).

Takes in the champion/challenger from MLflow and the day's features (bulk read, by id-range shards);
produces the retention team's high-risk file with reasons and the night's prediction-log rows.
Run by the ``score-nightly`` flow (``flows/score.py``), in process or on Dask.
"""
