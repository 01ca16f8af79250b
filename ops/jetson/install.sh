#!/usr/bin/env bash
# Installs a voicepool worker on a Jetson board (JetPack 5 or 6) or any Linux host:
#
#   sudo ops/jetson/install.sh                 # from a checkout of voicepool
#
# 1. Python >= 3.11 under /opt/voicepool/python, managed by uv, beside JetPack's own
#    python3 (3.8 on JetPack 5, 3.10 on JetPack 6), which stays as it is. Not under a
#    home directory: the unit's ProtectHome=yes hides /home and /root from the worker,
#    and a venv whose interpreter lives there fails at exec ("Permission denied").
# 2. A venv at /opt/voicepool/venv with the worker's dependencies from the lock file
#    (requirements/worker.txt, hashed: no web stack, no database, no embedded Redis, no
#    compiler needed on aarch64), then voicepool itself.
# 3. The `voicepool` system user, /etc/voicepool/worker.env (kept if it exists) and the
#    systemd unit, not started: edit the env file, run `voicepool doctor`, then enable.
#
# Options (environment):
#   PREFIX=/opt/voicepool   where Python, uv and the venv go
#   PYTHON=/usr/bin/python3.11   use this interpreter (>= 3.11) instead of a uv-managed one
#   SYSTEMD=0               install no user, env file or unit (a container, a test)
#   ALLOW_HOME_PYTHON=1     accept an interpreter under /home or /root (not with the unit)
set -euo pipefail

UV_VERSION=0.13.8
PYTHON_VERSION=3.11
PREFIX=${PREFIX:-/opt/voicepool}
SYSTEMD=${SYSTEMD:-1}
SOURCE=$(cd "$(dirname "$0")/../.." && pwd)

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ -f "$SOURCE/requirements/worker.txt" ] || die "run this from a voicepool checkout ($SOURCE has no requirements/worker.txt)"
if [ "$SYSTEMD" = 1 ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo), or with SYSTEMD=0 and a PREFIX you can write"
fi

# --- 1. Python >= 3.11 ------------------------------------------------------------------
if [ -z "${PYTHON:-}" ]; then
    # uv from PyPI (a static binary in a wheel, for aarch64 and x86_64), installed with
    # the system's python3, whatever its version; then uv fetches a standalone CPython.
    if [ ! -x "$PREFIX/uv/bin/uv" ]; then
        say "installing uv $UV_VERSION into $PREFIX/uv"
        python3 -m pip --version >/dev/null 2>&1 || die "python3 has no pip: apt-get install python3-pip"
        python3 -m pip install --quiet --disable-pip-version-check --target "$PREFIX/uv/lib" "uv==$UV_VERSION"
        install -d "$PREFIX/uv/bin"
        ln -sf "$PREFIX/uv/lib/bin/uv" "$PREFIX/uv/bin/uv"
    fi
    say "installing CPython $PYTHON_VERSION into $PREFIX/python (uv python install)"
    UV_PYTHON_INSTALL_DIR="$PREFIX/python" "$PREFIX/uv/bin/uv" python install --quiet "$PYTHON_VERSION"
    PYTHON=$(UV_PYTHON_INSTALL_DIR="$PREFIX/python" "$PREFIX/uv/bin/uv" python find --managed-python "$PYTHON_VERSION")
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); voicepool needs 3.11 or newer"
real_python=$(readlink -f "$PYTHON")
case "$real_python" in
    /home/* | /root/*)
        [ "${ALLOW_HOME_PYTHON:-0}" = 1 ] \
            || die "$PYTHON is $real_python, under a home directory: the unit (ProtectHome=yes) cannot run it. Leave PYTHON unset for a uv-managed Python in $PREFIX"
        ;;
esac
say "Python: $real_python ($("$PYTHON" -c 'import platform; print(platform.python_version())'))"

# --- 2. The venv, from the lock file ----------------------------------------------------
venv="$PREFIX/venv"
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    "$PYTHON" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
say "installing the worker's dependencies (requirements/worker.txt)"
"$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes -r "$SOURCE/requirements/worker.txt"
say "installing voicepool"
# From a copy of what the package holds, as the image does: pip builds in the source tree,
# and a checkout should not be left with build/ (nor the venv with the test harness).
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r "$SOURCE/pyproject.toml" "$SOURCE/README.md" "$SOURCE/api" "$SOURCE/worker" \
    "$SOURCE/shared" "$SOURCE/voicepool" "$stage/"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "$stage"
"$venv/bin/voicepool" --help >/dev/null
say "venv: $(du -sh "$venv" | cut -f1)"

# --- 3. User, environment, unit ---------------------------------------------------------
if [ "$SYSTEMD" = 1 ]; then
    id voicepool >/dev/null 2>&1 \
        || useradd --system --user-group --home-dir /var/lib/voicepool --shell /usr/sbin/nologin voicepool
    install -d -m 0750 -o root -g voicepool /etc/voicepool
    if [ ! -e /etc/voicepool/worker.env ]; then
        install -m 0640 -o root -g voicepool "$SOURCE/ops/jetson/worker.env.example" /etc/voicepool/worker.env
    fi
    sed "s|/opt/voicepool/venv|$venv|g" "$SOURCE/ops/jetson/voicepool-worker.service" \
        > /etc/systemd/system/voicepool-worker.service
    systemctl daemon-reload 2>/dev/null || true
    cat <<EOF
==> installed. Next:
    sudoedit /etc/voicepool/worker.env     # Redis URL and password, this board's address
    sudo systemd-run --wait --pipe --quiet -p User=voicepool -p EnvironmentFile=/etc/voicepool/worker.env \\
        $venv/bin/voicepool doctor --pool jetson   # checks this host, recommends --capacity
    sudo systemctl enable --now voicepool-worker
EOF
fi
