#!/usr/bin/env bash
# Create .venv and install the project with its test tools; fetch the Kafka jars.
# Idempotent and quick when nothing changed (keyed on pyproject.toml's hash).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
for tool in "$python" java mvn; do
  command -v "$tool" >/dev/null || { echo "setup.sh: '$tool' not found (needs Python 3.11+, Java 17, Maven)" >&2; exit 1; }
done
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.agentledger-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup.sh: installing agentledger and its dependencies into .venv" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
  echo "$want" >"$stamp"
fi
# The dashboard's browser tests drive Debian's Chromium (Playwright's own browser download
# needs a CDN this project never uses). Installed only when missing.
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup.sh: installing chromium and chromium-driver (apt-get) for tests/dashboard" >&2
    apt-get install -y -q chromium chromium-driver >/dev/null || {
      apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null
    } || echo "setup.sh: apt-get could not install chromium; tests/dashboard will fail until /usr/bin/chromium exists" >&2
  else
    echo "setup.sh: /usr/bin/chromium is missing and apt-get (as root) is unavailable: install Debian's" \
      "chromium and chromium-driver by hand, or tests/dashboard will fail" >&2
  fi
fi
bash scripts/kafka.sh fetch
