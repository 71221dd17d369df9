# syntax=docker/dockerfile:1
# The spendstream stream worker. docker-compose.yml runs it beside Apache Kafka (KRaft)
# and Redis; scale out with more replicas (one consumer group, more partitions).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SPENDSTREAM_STATE_DIR=/var/lib/spendstream

WORKDIR /src
# .dockerignore keeps the context to what `pip install .` needs (no tests, no .git).
COPY . .
RUN pip install '.[worker]' && rm -rf /src

# Not root: the worker needs nothing but the network and its own state directory.
RUN useradd --system --uid 10001 --home-dir /var/lib/spendstream --create-home spendstream
USER spendstream
WORKDIR /var/lib/spendstream

CMD ["spendstream", "worker"]
