# tierwise: the service image. Build: `docker build -t tierwise .`
# Run:   `docker run -p 8080:8080 -v "$PWD/policies:/app/policies:ro" tierwise`
# Policies live in a mounted volume: rev-ops edit them on the host and the service reloads them
# (checked and tested first) without a rebuild or a restart.

# --- build -------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# The manifest names the benches; the schema reference embeds the shipped policies.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY examples examples
COPY policies policies
RUN cargo build --release --locked --bin tierwise

# --- run ---------------------------------------------------------------------------------
FROM debian:bookworm-slim
# curl only for the HEALTHCHECK below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin tierwise
WORKDIR /app
COPY --from=build /src/target/release/tierwise /usr/local/bin/tierwise
COPY --chown=tierwise:tierwise policies /app/policies
COPY schemas /app/schemas
USER tierwise
ENV TIERWISE_LISTEN=0.0.0.0:8080 \
    TIERWISE_POLICIES=/app/policies
EXPOSE 8080
VOLUME ["/app/policies"]
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["tierwise"]
CMD ["serve"]
