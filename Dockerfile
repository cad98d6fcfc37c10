# syntax=docker/dockerfile:1
# The trusted-loader daemon. The base image is pinned by digest. The default is an index digest
# of python:3.11-slim-bookworm that public projects pin; it could not be pulled from this build
# machine (no registry access), so re-check it before a release and bump it deliberately:
#   docker buildx imagetools inspect python:3.11-slim-bookworm
#   docker build --build-arg PYTHON_DIGEST=sha256:<reviewed digest> -t trusted-loader .
# Running it, devices and privileges: docs/operations.md ("Container"). The `chain` extra is
# installed so that [publish.evm] works in the image (web3 is imported only when configured).
ARG PYTHON_DIGEST=sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM python:3.11-slim-bookworm@${PYTHON_DIGEST} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY . .
RUN python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --no-compile --constraint docker/constraints.txt '.[chain]' \
 && /opt/venv/bin/python -m pip uninstall --yes pip setuptools

FROM python:3.11-slim-bookworm@${PYTHON_DIGEST}
LABEL org.opencontainers.image.title="trusted-loader" \
      org.opencontainers.image.description="Boot-time loader for confidential VMs: attest, measure, decide, run, report" \
      org.opencontainers.image.licenses="Apache-2.0"
# No pip, setuptools or wheel in the final image: nothing here installs or builds anything.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && groupadd --system --gid 10001 trusted-loader \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/trusted-loader --shell /usr/sbin/nologin trusted-loader \
 && groupadd --system --gid 10002 trusted-loader-engine \
 && useradd --system --uid 10002 --gid 10002 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin trusted-loader-engine \
 && install -d -m 0700 -o 10001 -g 10001 /var/lib/trusted-loader \
 && install -d -m 0755 /etc/trusted-loader
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/trusted-loader
# Non-root by default (enough for the mock TEE and for hosts that grant the device group): the
# engine is then contained in a user namespace, which needs a seccomp profile that allows
# unshare(CLONE_NEWUSER). As root (configfs-tsm entries are root-only) the engine runs as
# trusted-loader-engine (10002): docs/operations.md ("Container") and docs/containment.md.
USER 10001:10001
STOPSIGNAL SIGTERM
ENTRYPOINT ["trusted-loader", "run"]
CMD ["--config", "/etc/trusted-loader/loader.toml"]
