#!/bin/sh
# The image's entrypoint: `accelerate launch ARGS` (ARGS: the image's CMD, or what follows the image name in
# `docker run`), after making sure any uid can write what the run needs. `docker run --user "$(id -u):$(id -g)"`
# gives a uid the image does not know; its home ($HOME, 1777 in the image) holds the matplotlib and Hugging Face
# caches, $SA_DIST_CACHE the baselines, and runs/ (a bind mount of the host's runs/) the run directories.
set -eu
if ! { [ -d "${HOME:-/nonexistent}" ] && [ -w "$HOME" ]; }; then  # e.g. HOME=/ for an unknown uid
  HOME=$(mktemp -d /tmp/home.XXXXXX)
  export HOME
fi
export MPLCONFIGDIR="${MPLCONFIGDIR:-$HOME/.config/matplotlib}" HF_HOME="${HF_HOME:-$HOME/.cache/huggingface}"
mkdir -p "$MPLCONFIGDIR" "$HF_HOME"
for dir in "${SA_DIST_CACHE:-$HOME/.cache/sa_dist}" "$PWD/runs"; do
  if [ -e "$dir" ] && ! [ -w "$dir" ]; then
    echo "sa_dist: $dir is not writable by uid $(id -u): run with --user \"\$(id -u):\$(id -g)\" (the owner of" \
         "the folder mounted there), or make it writable" >&2
    exit 1
  fi
done
exec accelerate launch "$@"
