#!/usr/bin/env bash
# Install the system packages fieldtrace needs when they are missing:
# mosquitto (the local and upstream brokers of tests and demo) and its clients.
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "mosquitto is missing: install it with your package manager" >&2; exit 1; }
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
# The package may start a system broker on 1883; fieldtrace never uses it
# (every test and the demo start their own brokers on free ports).
echo "installed mosquitto $(/usr/sbin/mosquitto -h 2>/dev/null | head -1 | awk '{print $3}')"
