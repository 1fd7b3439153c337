"""Operations: the local stack that runs the deployments, the backends it uses (which, and do
they answer), and the backtest of retraining policies.

Takes in ``CHURN_HOME``, the ports ``churn up`` is given, a backtest's scenario and policies;
produces running processes (PIDs, logs, health checks), the deployments, backtest tables and charts.
Run by ``churn up`` / ``status`` / ``down`` / ``deploy`` / ``worker`` (``flows/stack_cli.py``), ``churn backtest``.
"""
