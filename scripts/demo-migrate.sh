#!/usr/bin/env bash
# The demo mirror into the Conversations API (issue 19), verified. Run by `make demo` after
# scripts/demo.sh; alone, it builds a small mirror first. THREADSYNC_DEMO_DIR picks the folder.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.venv/bin"
TS="$BIN/threadsync"
DEMO="${THREADSYNC_DEMO_DIR:-$ROOT/demo}"
unset THREADSYNC_DEMO_DIR  # the script's own: threadsync refuses THREADSYNC_* names it does not know
mkdir -p "$DEMO"

source "$ROOT/scripts/lib.sh"

step "Start an emulator on $URL: the Conversations target (and the source, if needed)"
"$TS" --log-level warning emulator --port "$PORT" --api-key "$KEY" --seed 7 --threads 3 \
  --messages 45 --latency-ms 2 >"$DEMO/emulator-migrate.log" 2>&1 &
EMU=$!
trap 'kill $EMU 2>/dev/null || true' EXIT
wait_for_emulator

export THREADSYNC_DATABASE_URL="sqlite:///$DEMO/threadsync.db" THREADSYNC_LOG__FORMAT=console
if [ ! -f "$DEMO/threadsync.db" ]; then
  step "No demo mirror yet: mirror the emulator's seeded threads"
  export AZURE_OPENAI_ENDPOINT="$URL" AZURE_OPENAI_API_KEY="$KEY" OPENAI_API_VERSION=2024-08-01-preview
  THREADS=$(control GET truth | "$BIN/python" -c 'import json,sys; print(" ".join(json.load(sys.stdin)["threads"]))')
  "$TS" threads add $THREADS
  "$TS" --log-level warning sync
fi

# The destination is configured apart from the source: here a Foundry project on the emulator.
export THREADSYNC_MIGRATE__TARGET__PROFILE=foundry THREADSYNC_MIGRATE__TARGET__ENDPOINT="$URL"
export THREADSYNC_MIGRATE__TARGET__PROJECT=demo THREADSYNC_MIGRATE__TARGET__API_KEY="$KEY"
export THREADSYNC_MIGRATE__REQUESTS_PER_SECOND=200

step "threadsync migrate --dry-run (nothing is sent: the items, and each part replaced or dropped)"
"$TS" --log-level warning migrate --dry-run | tail -n 4

step "threadsync migrate (one conversation per thread, at most 20 items per request)"
"$TS" --log-level warning migrate

step "threadsync migrate again (exactly once: nothing to send)"
"$TS" --log-level warning migrate

step "threadsync migrate status"
"$TS" migrate status

step "threadsync migrate verify (every conversation against the mirror)"
"$TS" migrate verify

step "threadsync migrate map (thread id -> conversation id, for your own tables)"
"$TS" migrate map --out "$DEMO/conversations.csv"
head -n 4 "$DEMO/conversations.csv"

step "Done: the map is $DEMO/conversations.csv"
