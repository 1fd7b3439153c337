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
RUN groupadd --system --gid 10001 churn && useradd --system --uid 10001 --gid churn --home-dir /app churn
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
USER 10001:10001
VOLUME ["/data"]
# The worker serves /health on this port (`churn worker --with-healthcheck`, the default).
ENV PREFECT_WORKER_WEBSERVER_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=60s --timeout=10s --start-period=60s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/health', timeout=5)"]
ENTRYPOINT ["churn"]
# Default: a process worker for the churn-process pool (set PREFECT_API_URL to the server).
# Alternatives: `docker run IMAGE demo` (the whole story on simulated data),
# `docker run IMAGE score --date 2026-11-25` (one flow), `docker run -p 8000:8000 IMAGE serve
# --host 0.0.0.0` (the online endpoint).
CMD ["worker"]
