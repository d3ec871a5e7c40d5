#!/usr/bin/env bash
# What the test suite needs beyond requirements.txt: the test-only Python packages, and Debian's
# chromium with its driver for the chat page's browser test (installed with apt when missing; as
# root, or through sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  as_root=""
  [ "$(id -u)" = 0 ] || as_root="sudo"
  $as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq chromium chromium-driver >/dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
