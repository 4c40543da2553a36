#!/usr/bin/env bash
# Installs and starts what the test suite needs beyond Go: containerd and
# runc (Debian packages), a static busybox for the test image (Debian's
# busybox-static), git, iproute2 and iptables (isolated stage networks),
# chromium (the UI tests, driven by chromedp),
# and a running containerd. Idempotent: it installs only
# what is missing and starts containerd only when it does not answer.
set -euo pipefail

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null || { echo "test-deps: need root (or sudo) to install and start containerd" >&2; exit 1; }
	sudo="sudo"
fi

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

missing=()
for pkg in containerd runc busybox-static git iproute2 iptables chromium; do
	installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "test-deps: installing ${missing[*]}" >&2
	$sudo apt-get update -qq
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

socket=${WEFT_CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}
answers() { $sudo ctr --address "$socket" version >/dev/null 2>&1; }
if ! answers; then
	if [ -d /run/systemd/system ]; then
		echo "test-deps: starting containerd with systemctl" >&2
		$sudo systemctl start containerd
	else
		log=${TMPDIR:-/tmp}/weft-containerd.log
		echo "test-deps: starting containerd (log in $log)" >&2
		$sudo sh -c "nohup containerd >'$log' 2>&1 &"
	fi
	for _ in $(seq 100); do
		answers && break
		sleep 0.2
	done
	answers || { echo "test-deps: containerd does not answer on $socket" >&2; exit 1; }
fi
echo "test-deps: containerd $($sudo ctr --address "$socket" version | awk '/Server:/{s=1} s&&/Version:/{print $2; exit}') on $socket, runc $(runc --version | awk 'NR==1{print $3}'), busybox-static ready" >&2
