#!/usr/bin/env bash
# Install the Debian packages the tests and the demo run for real, when missing:
# Prometheus (+ promtool), Alertmanager (+ amtool), headless Chromium, docker-compose (config check only),
# PostgreSQL, podman + runc (the Docker API the image tests build and run against), mmdebstrap (their stand-in
# base image) and the docker CLI that `mlflow models build-docker` runs (bookworm ships it only in docker.io; its
# daemon is not used), Xvfb + xterm + tmux (the hand-in's serving screenshot is a real terminal), and a C compiler
# (gcc + libc6-dev: the tuned model's tree walker, src/msml/training/fastwalk.c, is built into its folder).
set -euo pipefail
declare -A need=([prometheus]=prometheus [promtool]=prometheus
                 [amtool]=prometheus-alertmanager [prometheus-alertmanager]=prometheus-alertmanager [chromium]=chromium [docker-compose]=docker-compose
                 [podman]=podman [runc]=runc [mmdebstrap]=mmdebstrap [docker]=docker.io
                 [Xvfb]=xvfb [xterm]=xterm [tmux]=tmux [cc]=gcc)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
# PostgreSQL (tracking server backend, Optuna's shared studies): Debian keeps initdb off PATH.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[ -f /usr/include/math.h ] || missing+=(libc6-dev)  # the C compiler's headers (math.h, stdint.h)
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
# kubectl renders deploy/kubernetes/ (its built-in kustomize) in tests/integration/test_kubernetes.py. This machine
# image ships it (1.32, kustomize v5.5); Debian bookworm's kubernetes-client is 1.20, whose kustomize v2.0.3 refuses
# the kustomizations ("unknown field labels"), so it is not installed as a stand-in: say what is missing instead.
command -v kubectl >/dev/null 2>&1 || echo "[system] warning: no kubectl (1.21 or newer): tests/integration/test_kubernetes.py fails without it; install it from the Kubernetes project's packages" >&2

# Debian's prometheus / prometheus-alertmanager start their own services (ports 9090/9093, all interfaces).
# They are not wanted: msml runs both as plain processes on loopback, and a system Prometheus on 9090
# would hold the demo's port. Stop and disable them (run after every install, and on every run: idempotent).
disable_services() {
  for svc in prometheus prometheus-alertmanager; do
    if [ -d /run/systemd/system ] && systemctl list-unit-files "$svc.service" >/dev/null 2>&1; then
      $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$svc" ]; then
      # the init script stops only the PID in its own pid file (never our loopback processes)
      ls /run/prometheus/*.pid >/dev/null 2>&1 && { $SUDO "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; }
      $SUDO update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
}

if [ ${#missing[@]} -eq 0 ]; then disable_services; exit 0; fi
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "error: installing ${missing[*]} needs root: run this script as root, or install sudo" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no apt-get (not Debian/Ubuntu): install these yourself, then rerun: ${missing[*]}" >&2
  exit 1
fi
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
started=$SECONDS
echo "[system] installing Debian packages: $packages(Chromium is the largest; a few minutes)"
echo "[system] apt-get update"
$SUDO apt-get update -qq
# one progress line per package fetched and set up, instead of minutes of silence
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $packages \
  | { grep --line-buffered -E '^(Get:|Setting up)' || true; } | sed -u 's/^/[system]   /'
disable_services
echo "[system] done in $((SECONDS - started)) s"
