# syntax=docker/dockerfile:1
# churn-ops image: dependencies from uv.lock (the same versions as every other machine).

FROM python:3.11-slim AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/app/.venv
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY flows ./flows
COPY tasks ./tasks
COPY feature_repo ./feature_repo
COPY sql ./sql
COPY prefect.yaml ./
RUN uv sync --frozen --no-dev

FROM python:3.11-slim AS runtime
RUN groupadd --system churn && useradd --system --gid churn --home-dir /app churn
WORKDIR /app
COPY --from=build --chown=churn:churn /app /app
ENV PATH="/app/.venv/bin:$PATH" \
    CHURN_HOME=/data \
        WHYLOGS_NO_ANALYTICS=True \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY=false \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    SCARF_NO_ANALYTICS=true
RUN mkdir -p /data && chown churn:churn /data
USER churn
VOLUME ["/data"]
HEALTHCHECK --interval=60s --timeout=10s CMD ["churn", "--help"]
ENTRYPOINT ["churn"]
# Alternatives: `docker run IMAGE demo`, `docker run IMAGE features build`.
CMD ["demo"]
