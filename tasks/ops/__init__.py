"""Operations: the local stack that runs the deployments (Prefect server, worker, MLflow UI).

Takes in ``CHURN_HOME`` and the ports ``churn up`` is given; produces running processes with
their PIDs and logs under ``$CHURN_HOME``, health checks of each, and the deployments.
Run by ``churn up`` / ``status`` / ``down`` / ``deploy`` / ``worker`` (``flows/stack_cli.py``).
"""
