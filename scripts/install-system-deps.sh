#!/usr/bin/env bash
# Install the Debian packages the tests and the demo run for real, when missing:
# Prometheus (+ promtool), Alertmanager (+ amtool), headless Chromium, docker-compose (config check only),
# PostgreSQL.
set -euo pipefail
declare -A need=([prometheus]=prometheus [promtool]=prometheus
                 [amtool]=prometheus-alertmanager [prometheus-alertmanager]=prometheus-alertmanager [chromium]=chromium [docker-compose]=docker-compose)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
# PostgreSQL (tracking server backend, Optuna's shared studies): Debian keeps initdb off PATH.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
echo "installing Debian packages: $packages"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
# The packages' own services are not wanted: tests start Prometheus/Alertmanager as plain processes.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $packages >/dev/null
