# activity-exporter: serves usage analytics of a Calibre-Web / CWA install on /metrics (:9712).
# Default: demo data (a generated cwa.db and Calibre library, with live events). For a real install, mount
# cwa.db and the Calibre library read-only and override the command (see docker-compose.yml).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Metadata first so the dependency layer is cached while only the code changes.
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip install ".[postgres]" \
    && rm -rf /src

# Unprivileged user; /data holds the checkpoint (state.json) and the demo data.
RUN groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid exporter --home-dir /data --shell /usr/sbin/nologin exporter \
    && mkdir -p /data \
    && chown exporter:exporter /data
WORKDIR /data
VOLUME ["/data"]
USER exporter

EXPOSE 9712

# /healthz answers 200 while refreshes succeed; python is in the image, curl is not.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9712/healthz', timeout=4)"]

ENTRYPOINT ["activity-exporter"]
CMD ["serve", "--demo", "--demo-dir", "/data/demo", "--listen", ":9712", "--state", "/data/state.json"]
