#!/usr/bin/env bash
# Install gm-hub and everything it needs:   bash install.sh        (add "test" for the test tools and Chromium)
# On Linux without CUDA the CPU build of torch goes in first, so pip does not pull the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
if ! "$python" -c "import torch" 2>/dev/null; then
  if [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    # The "+cpu" build: a wheel pip already knows locally (find-links), else PyTorch's CPU index. PyPI has no
    # "+cpu" version, so this can never pull the CUDA build; torch's own dependencies come from the usual index.
    "$python" -m pip install "torch==2.13.0+cpu" \
      || "$python" -m pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
  fi
fi
extras=""
if [ "${1:-}" = test ]; then
  extras="[test]"
  # tests/test_browser.py drives Debian's Chromium through Playwright (never `playwright install`'s download)
  if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
    sudo=""; if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
    $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
  fi
fi
"$python" -m pip install -e ".${extras}"
