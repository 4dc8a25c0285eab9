# octo-gateway in a container: see docs/deploy.md ("Container"). Not yet built: no Docker engine
# was at hand when it was written.
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
# The gateway's wheel and the wheels of all its dependencies.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --home-dir /var/lib/octo-gateway --create-home octo-gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels octo-gateway && rm -rf /wheels
USER octo-gateway
WORKDIR /var/lib/octo-gateway
ENV GATEWAY_CONFIG=/etc/octo-gateway/gateway.toml
VOLUME /var/lib/octo-gateway
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"
# 0.0.0.0: inside a container the port is published by the runtime, not reached on loopback.
CMD ["gateway", "serve", "--host", "0.0.0.0"]
