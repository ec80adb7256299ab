# Shared by the demo scripts (sourced, not run): a free port and a fresh key for the emulator,
# its control plane, and output helpers. Needs BIN (the virtualenv's bin folder) set first.
PORT=$("$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KEY="demo-$("$BIN/python" -c 'import secrets; print(secrets.token_hex(8))')"
URL="http://127.0.0.1:$PORT"

control() { # control METHOD PATH [JSON]: the emulator's control plane (outside the API namespace)
  "$BIN/python" - "$1" "$URL/_emulator/$2" "${3:-}" <<'PY'
import sys, httpx, json
method, url, body = sys.argv[1:4]
r = httpx.request(method, url, json=json.loads(body) if body else None, timeout=30)
r.raise_for_status()
print(json.dumps(r.json()))
PY
}

field() { "$BIN/python" -c "import json,sys; print(json.load(sys.stdin)$1)"; }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

wait_for_emulator() { # [PATH]: until the control plane answers (10 s), then once more to fail loudly
  for _ in $(seq 1 100); do
    if control GET "${1:-behaviour}" >/dev/null 2>&1; then break; fi
    sleep 0.1
  done
  control GET "${1:-behaviour}" >/dev/null
}
