# The eucora binary in a small Debian image. Build: `docker build -t eucora .`
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin eucora

FROM debian:bookworm-slim
# curl is for the health check; ca-certificates for TLS to a managed PostgreSQL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/eucora --create-home eucora
COPY --from=build /src/target/release/eucora /usr/local/bin/eucora
USER eucora
WORKDIR /var/lib/eucora
ENV EUCORA_LISTEN=0.0.0.0:8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD curl -fsS http://127.0.0.1:8000/health/ready || exit 1
ENTRYPOINT ["eucora"]
CMD ["serve"]
