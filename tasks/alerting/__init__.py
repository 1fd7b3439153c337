"""Alerting: Slack messages (Block Kit with a plain-text fallback), no repeats, nothing lost.

Takes in an :class:`~tasks.alerting.alerts.Alert` of aggregates (never a subscriber's data);
produces a Slack post by webhook or bot token, or an outbox entry under ``$CHURN_HOME/alerts/``.
Sent by every flow (gates, drift incidents, performance, failures) through ``flows/alerting.py``;
a drift incident's update and resolution are replies in its onset's thread (bot token).
"""
