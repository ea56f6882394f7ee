# The agentledger processes (worker, sink, api) for docker-compose.yml and real clusters.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY agentledger agentledger
COPY schemas schemas
COPY ingest ingest
COPY processors processors
COPY api api
COPY sql sql
RUN pip install --no-cache-dir .
USER 65534:65534
ENTRYPOINT ["agentledger"]
