# MLflow tracking server image: a small one of its own (no torch, no Ray), the same MLflow and boto3 as
# the project's lock, MLflow's basic-auth app (mlflow[auth]: Flask-WTF) and the PostgreSQL driver. Build
# from the repository root:
#   docker build -f k8s/mlflow.Dockerfile -t workembed-mlflow:3.17.2 .
# Pin the base by digest (python:3.11-slim-bookworm@sha256:...) in a release pipeline.
FROM python:3.11-slim-bookworm

ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

COPY platform/requirements.lock /tmp/requirements.lock
RUN pip install -c /tmp/requirements.lock "mlflow[auth]==${MLFLOW_VERSION}" boto3 \
        "psycopg2-binary==${PSYCOPG2_VERSION}" \
    && rm /tmp/requirements.lock \
    && useradd --uid 1000 --create-home mlflow

USER 1000
WORKDIR /home/mlflow
EXPOSE 5000
ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
