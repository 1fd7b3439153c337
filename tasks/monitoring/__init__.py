"""Monitoring: whylogs profiles, data contracts and drift of a scored day, drift incidents and
their follow-up retraining, realized performance.

Takes in the day's scoring features and predictions, the champion's reference, matured outcomes;
produces profiles, drift history and report, incident and follow-up state, performance per version.
Run by the ``monitor`` and ``evaluate-performance`` flows (``flows/monitor.py``, ``flows/performance.py``).
"""
