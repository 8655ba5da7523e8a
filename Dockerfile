# sa_dist on a CUDA-enabled PyTorch base: `accelerate launch` is the entrypoint, scripts/unlearn.py the default command.
#   docker build -t sa_dist .
#   docker run --gpus all -v "$PWD/runs:/work/runs" -v sa_cache:/cache sa_dist                 # forget 2, one GPU
#   docker run --gpus all sa_dist --config_file accelerate_config.yaml --num_processes 4 scripts/unlearn.py  # 4 GPUs
#   docker run --rm sa_dist scripts/unlearn.py --quick                                          # smoke command
# No HEALTHCHECK: this is a batch job that exits when done, not a service; the smoke command above is the check.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SA_DIST_CACHE=/cache \
    MPLBACKEND=Agg

WORKDIR /work
# Dependencies first, in their own cached layer: editing the code does not reinstall them. The base image's torch
# satisfies torch>=2.2, so pip keeps its CUDA build. The last line of requirements.txt (-e .) comes below.
COPY requirements.txt .
RUN grep -v '^-e' requirements.txt > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY pyproject.toml README.md accelerate_config.yaml ./
COPY sa_dist/ sa_dist/
COPY scripts/ scripts/
RUN pip install --no-cache-dir --no-deps -e . \
    && useradd --create-home --uid 1000 --user-group sa \
    && mkdir -p /cache /work/runs \
    && chown -R 1000:1000 /cache /work
USER 1000:1000

# Run directories and the caches (baselines, Fisher, evaluator, laid-out MNIST) outlive the container.
VOLUME ["/work/runs", "/cache"]
HEALTHCHECK NONE
ENTRYPOINT ["accelerate", "launch"]
CMD ["scripts/unlearn.py"]
