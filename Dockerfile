# syntax=docker/dockerfile:1
# The firegrid gateway image: `firegrid run` by default; the same image runs `firegrid acl` and `firegrid simulate`
# in docker-compose.yml.  Non-root, config mounted at /etc/firegrid/firegrid.yaml, state in /var/lib/firegrid.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY gateway ./gateway
COPY rules ./rules
COPY alerts ./alerts
COPY simulators ./simulators
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# firegrid runs as an unprivileged user.  /var/lib/mosquitto-auth belongs to Mosquitto's uid 1883: a new named volume
# mounted there inherits that owner, so `firegrid acl` (run as 1883) can write files the broker may read.
RUN groupadd --system --gid 10001 firegrid \
 && useradd --system --uid 10001 --gid firegrid --home-dir /var/lib/firegrid --shell /usr/sbin/nologin firegrid \
 && mkdir -p /etc/firegrid /var/lib/firegrid/spool /var/lib/mosquitto-auth \
 && chown -R firegrid:firegrid /var/lib/firegrid \
 && chown 1883:1883 /var/lib/mosquitto-auth
USER firegrid
WORKDIR /var/lib/firegrid
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=3)"]
ENTRYPOINT ["firegrid"]
CMD ["run", "--config", "/etc/firegrid/firegrid.yaml"]
