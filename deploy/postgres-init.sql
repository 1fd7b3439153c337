-- Run once by the postgres image on an empty data volume (POSTGRES_DB already made `prefect`):
-- MLflow's backend store gets a database of its own, owned by the same user.
CREATE DATABASE mlflow OWNER churn;
