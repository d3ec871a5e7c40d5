#!/usr/bin/env bash
# What the test suite needs beyond requirements.txt: the test-only Python packages, Debian's
# chromium with its driver for the chat page's browser test, and bubblewrap, the sandbox that
# executes generated code (installed with apt when missing; as root, or through sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v bwrap >/dev/null; then
  as_root=""
  [ "$(id -u)" = 0 ] || as_root="sudo"
  $as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq chromium chromium-driver bubblewrap >/dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
