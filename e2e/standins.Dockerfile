# Stand-ins for the official redis, nginx and prometheus images, built from Debian packages on
# any Debian bookworm base. `make e2e` uses them where Docker Hub cannot be reached; users of
# docker-compose.yml get the official images. Each target starts the way its official image
# does, so docker-compose.yml's commands work with either:
#
#   docker build --network host --build-arg BASE_IMAGE=rnnserve-base:bookworm \
#     --target redis -f e2e/standins.Dockerfile -t rnnserve-e2e/redis:bookworm e2e

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS redis
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]

FROM ${BASE_IMAGE} AS nginx
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]

FROM ${BASE_IMAGE} AS prometheus
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
