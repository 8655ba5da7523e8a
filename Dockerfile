# sa_dist on a CUDA-enabled PyTorch base. Build: docker build -t sa_dist .
# Run:  docker run --gpus all -v $PWD/runs:/work/runs -v sa_cache:/cache sa_dist            (unlearn.py --forget 2)
#       docker run --gpus all sa_dist scripts/unlearn.py --quick                              (smoke command)
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SA_DIST_CACHE=/cache \
    MPLBACKEND=Agg

WORKDIR /work
# Dependencies first, in their own cached layer (the project itself is installed below).
COPY requirements.txt .
RUN grep -v '^-e' requirements.txt > /tmp/req.txt && pip install -r /tmp/req.txt

COPY pyproject.toml README.md accelerate_config.yaml ./
COPY sa_dist/ sa_dist/
COPY scripts/ scripts/
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 sa \
    && mkdir -p /cache /work/runs \
    && chown -R sa /cache /work
USER sa

VOLUME ["/work/runs", "/cache"]
HEALTHCHECK NONE
ENTRYPOINT ["accelerate", "launch"]
CMD ["scripts/unlearn.py", "--forget", "2"]
