# Sourced by bin/* wrappers: puts the venv, anvil and the solc shim on the paths every tool expects.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SOLCX_BINARY_PATH="$ROOT/.solcx"
export PATH="$ROOT/.venv/bin:$ROOT/node_modules/@foundry-rs/anvil-linux-amd64/bin:$PATH"
export CLEARHOUSE_ROOT="$ROOT"
