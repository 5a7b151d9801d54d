# The Tollgate node image: one statically linked binary on an empty root filesystem.
#
# Build it with scripts/build-image.sh, which compiles `tollgate` with a static glibc and
# stages it, with the few files a scratch image needs, under target/image/. Nothing is pulled
# from a registry (no base image, no build frontend), so this builds on an offline engine.
#
# What is inside: /usr/local/bin/tollgate, /etc/passwd and /etc/group naming the one
# unprivileged user, and /var/lib/tollgate owned by that user. No shell, no package manager.
# Static glibc resolves peers through /etc/hosts and DNS without NSS modules, so there is
# deliberately no nsswitch.conf.
FROM scratch

COPY target/image/rootfs/ /
# The data directory belongs to the node's user; a named volume mounted here copies that
# ownership on first use, so the node can write its log without running as root. /certs
# likewise, for the volume `tollgate certs init` writes the cluster's certificates into.
COPY --chown=65532:65532 target/image/data/ /var/lib/tollgate/
COPY --chown=65532:65532 target/image/data/ /certs/

# Numeric, so the engine needs no passwd lookup to drop privileges.
USER 65532:65532
WORKDIR /var/lib/tollgate
VOLUME ["/var/lib/tollgate"]

# A node needs TLS files (TOLLGATE_TLS_CA, TOLLGATE_TLS_CERT, TOLLGATE_TLS_KEY) or
# TOLLGATE_INSECURE=true to start; see docker-compose.yml.
ENV TOLLGATE_DATA_DIR=/var/lib/tollgate \
    TOLLGATE_LISTEN=0.0.0.0:7001 \
    TOLLGATE_PEER_LISTEN=0.0.0.0:7101 \
    TOLLGATE_METRICS_LISTEN=0.0.0.0:9100

# gRPC for clients, gRPC for peers (Raft, mutual TLS), Prometheus metrics.
EXPOSE 7001 7101 9100

# SIGTERM stops the node cleanly (Raft shut down, storage closed).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve"]
