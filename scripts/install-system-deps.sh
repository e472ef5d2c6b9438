#!/usr/bin/env bash
# Install the Debian packages the tests and the demo run for real, when missing:
# Prometheus (+ promtool), Alertmanager (+ amtool), headless Chromium, docker-compose (config check only),
# podman + runc (the Docker API the image tests build and run against), mmdebstrap (their stand-in base image) and
# the docker CLI that `mlflow models build-docker` runs (bookworm ships it only in docker.io; its daemon is not used).
set -euo pipefail
declare -A need=([prometheus]=prometheus [promtool]=prometheus
                 [amtool]=prometheus-alertmanager [prometheus-alertmanager]=prometheus-alertmanager [chromium]=chromium [docker-compose]=docker-compose
                 [podman]=podman [runc]=runc [mmdebstrap]=mmdebstrap [docker]=docker.io)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
echo "installing Debian packages: $packages"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
# The packages' own services are not wanted: tests start Prometheus/Alertmanager as plain processes.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $packages >/dev/null
