"""Serving: real-time scoring of one subscriber from the Feast online store by the champion.

Takes in a subscriber id, the online store and the champion alias (reloaded when it moves);
produces a probability, tier and reasons, buffered online prediction-log rows and metrics.
Run by ``churn serve`` (``flows/serve.py``: FastAPI under uvicorn).
"""
