#!/usr/bin/env bash
# Runs every test of Tubes on a fresh machine: installs what the tests
# need (Debian packages, the npm reference server), checks formatting and
# lints, then runs the whole test suite. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive: curl (real client), socat (the raw
# relay reference in the benchmark, the tunnel recipes of tests/tunnel.rs),
# Node.js and npm (the reference server), Chromium (the real browser of
# tests/browser.rs), `script` from bsdutils (a pseudo-terminal for the
# progress bar in tests/client_interop.rs), tar (unpacks a folder the
# client sent, in the same file) and OpenSSH, server and client (sshd, ssh,
# scp and ssh-keygen carried through the tunnels of tests/tunnel.rs) and
# nginx (the load balancer in front of three nodes in tests/scaleout.rs).
need=()
command -v curl >/dev/null || need+=(curl)
command -v socat >/dev/null || need+=(socat)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v script >/dev/null || need+=(bsdutils)
command -v tar >/dev/null || need+=(tar)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update
  $sudo DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
fi

# The npm reference server for the differential test, playwright-core for
# the browser tests, and what assets/app/vendor.js is built from (esbuild,
# @noble/curves, uqr), pinned by the lock file.
if [ ! -d tests/js/node_modules/piping-server ] || [ ! -d tests/js/node_modules/playwright-core ] \
  || [ ! -d tests/js/node_modules/esbuild ] || [ ! -d tests/js/node_modules/@noble/curves ] \
  || [ ! -d tests/js/node_modules/uqr ]; then
  npm ci --prefix tests/js --no-audit --no-fund
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
