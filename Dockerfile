# gencli serve in a container: a slim Python image, the package and its dependencies as
# wheels, run as an unprivileged user (uid 10001).
#
#   docker build -t gencli .
#   docker run -p 11434:11434 -e GENCLI_API_KEY=... -e OPENAI_API_KEY=... \
#     -v "$PWD/models.json:/etc/gencli/models.json:ro" gencli
#
# The server runs in /etc/gencli, so a models.json (and a .env) mounted there is read as
# ./models.json (./.env); without one the built-in models are served.
#
# The bind: inside a container 127.0.0.1 is the container's own loopback, which a published
# port (-p) cannot reach, so the server listens on 0.0.0.0 here. gencli refuses to serve a
# non-loopback address without GENCLI_API_KEY (anyone who reaches the port could spend the
# provider keys), so the container does not start without one: set it (clients send
# "Authorization: Bearer <key>"). Only behind a network nobody else reaches, add
# --insecure-no-auth to the command instead.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /home/gencli --create-home gencli \
    && mkdir -p /etc/gencli
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER 10001:10001
WORKDIR /etc/gencli
ENV PYTHONUNBUFFERED=1 HOME=/home/gencli
EXPOSE 11434
STOPSIGNAL SIGTERM
# asks the port of CMD below: change both together
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:11434/health', timeout=2).status != 200)"]
ENTRYPOINT ["gencli", "serve"]
CMD ["--host", "0.0.0.0", "--port", "11434", "--log-format", "json"]
