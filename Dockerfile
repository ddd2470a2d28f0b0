# The ftq daemon. docker-compose.yml runs it with the host's GPUs and a volume for its state.
FROM python:3.11-slim
WORKDIR /srv/ftq
# torch first and on its own: the default PyPI build for Linux x86-64 carries CUDA.
ARG TORCH=torch
RUN pip install --no-cache-dir "${TORCH}"
COPY pyproject.toml README.md ./
COPY server server
COPY scheduler scheduler
COPY worker worker
COPY migrations migrations
# EXTRAS: optional parts, e.g. --build-arg EXTRAS=[ray] for the Ray head and worker images (docker-compose.yml).
ARG EXTRAS=
RUN pip install --no-cache-dir -e ".${EXTRAS}"
COPY configs configs
ENV FTQ_DATA_DIR=/var/lib/ftq FTQ_INPUT_DIRS=/srv/ftq
EXPOSE 8000
# 0.0.0.0, so that a published port reaches it: ftq serve then needs FTQ_API_TOKEN (docker run -e
# FTQ_API_TOKEN=...), and says so if it is missing; docker-compose.yml requires it.
CMD ["ftq", "serve", "--host", "0.0.0.0", "--port", "8000"]
