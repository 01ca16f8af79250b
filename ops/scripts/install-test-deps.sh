#!/usr/bin/env bash
# Installs the system packages the test suite needs, from Debian's archive,
# when they are missing: promtool (package prometheus) and amtool (package
# prometheus-alertmanager) for the ops-file checks,
# PostgreSQL for the store tests, Chromium (package chromium) for the web app's
# browser test (tests/e2e drives /usr/bin/chromium; no browser is downloaded),
# coturn (turnserver) for the TURN relay test, kubectl (package kubernetes-client) to
# render deploy/k8s's kustomizations (tests/unit/test_k8s.py; Debian's 1.20 does).
# Idempotent and quick when everything is present. Needs root (CI runs as root).
set -euo pipefail

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
# Caddy and NSS's certutil for the HTTPS proxy test (tests/e2e/test_https_proxy.py).
command -v caddy >/dev/null 2>&1 || need+=(caddy)
command -v certutil >/dev/null 2>&1 || need+=(libnss3-tools)
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "missing test dependencies: ${need[*]}; install them as root (apt-get install ${need[*]})" >&2
    exit 1
fi
echo "installing test dependencies: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d-free images would start the services; the tests start what they need.
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's caddy package starts a system service on port 80; the test runs its own.
if [[ " ${need[*]} " == *" caddy "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now caddy.service >/dev/null 2>&1 || true
fi
