# sa_dist with the tested versions (constraints.txt: torch 2.14.1, torchvision 0.29.1, accelerate 1.16.0) on
# Python 3.11. The entrypoint (docker/entrypoint.sh) runs `accelerate launch ARGS`; the default ARGS run
# scripts/unlearn.py with accelerate_config.yaml: ONE process, on the first GPU given or on the CPU. Without a
# config file `accelerate launch` would start one process per visible GPU.
#   docker build -t sa_dist .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/runs:/app/runs" -v sa_cache:/cache sa_dist     # forget 2, CPU
#   docker run --rm --gpus 1 --user "$(id -u):$(id -g)" -v "$PWD/runs:/app/runs" -v sa_cache:/cache sa_dist   # one GPU
#   docker run --rm --gpus all --ipc=host -v sa_cache:/cache sa_dist \
#       --config_file accelerate_multi_gpu.yaml --num_processes 4 scripts/unlearn.py --forget 2          # 4 GPUs (DDP)
#   docker run --rm sa_dist --config_file accelerate_config.yaml scripts/unlearn.py --quick             # smoke command
# --gpus needs the NVIDIA container toolkit on the host. Several GPUs talk over NCCL through /dev/shm, which Docker
# caps at 64 MB: pass --ipc=host or --shm-size=1g. --user: run directories are then the host user's files (any uid
# works: the entrypoint gives it a writable home; /cache and /app/runs are world-writable in the image).
# torch 2.14.1 from PyPI is its CUDA build; for a smaller CPU-only image add PyTorch's CPU wheel index, whose
# 2.14.1+cpu satisfies the pin:
#   docker build -t sa_dist --build-arg PIP_TORCH="--extra-index-url https://download.pytorch.org/whl/cpu" .
# No HEALTHCHECK: this is a batch job that exits when done, not a service; the smoke command above is the check.
FROM python:3.11-slim-bookworm

ARG PIP_TORCH=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SA_DIST_CACHE=/cache \
    HOME=/home/sa \
    MPLBACKEND=Agg

WORKDIR /app
# Dependencies first, in their own cached layer: editing the code does not reinstall them. The install is the
# README's (requirements.txt within constraints.txt); the last line of requirements.txt (-e .) comes below.
COPY requirements.txt constraints.txt ./
# hadolint ignore=SC2086
RUN grep -v '^-e' requirements.txt > /tmp/requirements.txt \
    && pip install --no-cache-dir $PIP_TORCH -r /tmp/requirements.txt -c constraints.txt \
    && rm /tmp/requirements.txt

COPY pyproject.toml README.md accelerate_config.yaml accelerate_multi_gpu.yaml ./
COPY sa_dist/ sa_dist/
COPY scripts/ scripts/
COPY docker/entrypoint.sh docker/
RUN pip install --no-cache-dir --no-deps -e . \
    && useradd --create-home --home-dir /home/sa --uid 1000 --user-group sa \
    && mkdir -p /cache /app/runs \
    && chmod 1777 /cache /app/runs /home/sa \
    && chmod 755 docker/entrypoint.sh
USER 1000:1000

# Run directories and the caches (baselines, Fisher, evaluator, laid-out MNIST) outlive the container.
VOLUME ["/app/runs", "/cache"]
HEALTHCHECK NONE
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["--config_file", "accelerate_config.yaml", "scripts/unlearn.py"]
