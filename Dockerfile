# recjobs on the official Airflow image: the project is installed at build time, so
# containers start with everything in place (no pip install at start-up).
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11
ARG AIRFLOW_VERSION

ENV TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    RECJOBS_HOME=/opt/airflow/recjobs-data

COPY --chown=airflow:root pyproject.toml README.md /opt/recjobs/
COPY --chown=airflow:root recjobs /opt/recjobs/recjobs
# Pinning apache-airflow to the image's version keeps pip from moving Airflow itself;
# the celery provider lets the same image run the CeleryExecutor override.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
        "apache-airflow-providers-celery" "/opt/recjobs[tf]"

COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
