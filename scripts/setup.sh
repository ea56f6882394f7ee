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
bash scripts/kafka.sh fetch
