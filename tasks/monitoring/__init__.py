"""Monitoring: whylogs profiles, data contracts and drift of a scored day, realized performance.

Takes in the day's scoring features and predictions, the champion's reference, matured outcomes;
produces profiles, drift results and history, an HTML drift report, performance per version.
Run by the ``monitor`` and ``evaluate-performance`` flows (``flows/monitor.py``, ``flows/performance.py``).
"""
