#!/bin/sh
# The JavaScript client's tests (clients/js) need its one npm dependency, @msgpack/msgpack,
# at the version package-lock.json pins. Install it when it is missing or the lock changed;
# without node or npm, say why and carry on: those tests then skip, giving the same reason.
cd "$(dirname "$0")/../clients/js" || exit 0
skip() { echo "note: $1: the JavaScript client's tests will be skipped" >&2; exit 0; }
command -v node >/dev/null 2>&1 || skip "node is missing"
command -v npm >/dev/null 2>&1 || skip "npm is missing"
stamp=node_modules/.package-lock.json
if [ -f "$stamp" ] && [ ! package-lock.json -nt "$stamp" ]; then
    exit 0
fi
echo "installing the JavaScript client's dependency (npm ci in clients/js)..." >&2
npm ci --no-audit --no-fund --loglevel=error >/dev/null || skip "npm ci failed"
