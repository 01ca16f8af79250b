#!/usr/bin/env bash
# Resolves the worker's lock file (requirements/worker.txt) for a Jetson board from
# PyPI's metadata: aarch64, glibc 2.31 (JetPack 5; JetPack 6 has 2.35), Python 3.11,
# wheels only but for pure-Python sdists named below. It succeeds when every package,
# at the locked version, has a wheel a board can install without a compiler.
# Needs the network (PyPI) and uv (`make lock` installs it into .venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=${UV:-.venv/bin/uv}
PURE_PYTHON_SDISTS=docopt  # num2words' (via pipecat-ai): no wheel, no compiler needed
for platform in aarch64-manylinux_2_31 aarch64-manylinux_2_35; do
    resolved=$("$UV" pip compile pyproject.toml --extra worker --python-version 3.11 \
        --python-platform "$platform" --only-binary :all: --no-binary "$PURE_PYTHON_SDISTS" \
        -c requirements/worker.txt --no-header -o - 2>/dev/null)
    count=$(grep -cE '^[A-Za-z0-9_.-]+==' <<<"$resolved")
    echo "$platform: $count packages, each a wheel at its locked version ($PURE_PYTHON_SDISTS: an sdist)"
done
