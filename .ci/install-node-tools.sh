#!/usr/bin/env bash
# Install the Node tools the chain tests use into <repo>/.node-tools (git-ignored):
# anvil (a local EVM JSON-RPC node) and solc-js (to check contracts/ReportRegistry.json).
# Idempotent: does nothing when the pinned versions are already there.
# The tests find anvil at .node-tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
# (or $TL_ANVIL) and solc through $TL_NODE_TOOLS (default .node-tools).
set -euo pipefail

ANVIL_VERSION="1.7.1"
SOLC_VERSION="0.8.37"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${TL_NODE_TOOLS:-$repo/.node-tools}"
mkdir -p "$dest"
cd "$dest"

installed() {
  node -e "process.exit(require('./node_modules/$1/package.json').version === '$2' ? 0 : 1)" 2>/dev/null
}

if ! command -v npm >/dev/null 2>&1; then
  echo "install-node-tools: npm not found; the anvil and solc tests will be skipped" >&2
  exit 0
fi
if installed "@foundry-rs/anvil-linux-amd64" "$ANVIL_VERSION" && installed solc "$SOLC_VERSION"; then
  echo "install-node-tools: anvil $ANVIL_VERSION and solc $SOLC_VERSION already in $dest" >&2
  exit 0
fi
[ -f package.json ] || echo '{"name": "trusted-loader-node-tools", "private": true}' > package.json
npm install --no-audit --no-fund --loglevel=error \
  "@foundry-rs/anvil-linux-amd64@$ANVIL_VERSION" "solc@$SOLC_VERSION"
"$dest/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil" --version | head -1 >&2
