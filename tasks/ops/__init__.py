"""Operations: the local stack that runs the deployments (Prefect server, worker, MLflow UI).

Takes in the settings (ports, ``CHURN_HOME``); produces running processes with their PIDs and
logs under ``$CHURN_HOME``, and health checks of each.
Run by ``churn up`` / ``churn status`` / ``churn down`` (``flows/stack_cli.py``).
"""
