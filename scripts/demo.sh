#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded default (the emulator + SQLite).
# Everything it makes lives in ./demo/ (removed and remade on each run).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
TS="$BIN/threadsync"
DEMO=demo
rm -rf "$DEMO" && mkdir -p "$DEMO"

source scripts/lib.sh

step "Start the emulator on $URL (5 seeded threads x 300 messages, 5 ms latency)"
"$TS" --log-level warning emulator --port "$PORT" --api-key "$KEY" --seed 42 --threads 5 \
  --messages 300 --latency-ms 5 --state "$DEMO/emulator-state.json" \
  --threads-file "$DEMO/threads.txt" >"$DEMO/emulator.log" 2>&1 &
EMU=$!
trap 'kill $EMU 2>/dev/null || true' EXIT
wait_for_emulator

export AZURE_OPENAI_ENDPOINT="$URL" AZURE_OPENAI_API_KEY="$KEY" OPENAI_API_VERSION=2024-08-01-preview
export THREADSYNC_DATABASE_URL="sqlite:///$DEMO/threadsync.db" THREADSYNC_LOG__FORMAT=console
FIRST=$(head -n 1 "$DEMO/threads.txt")

step "threadsync threads add --from-file (the emulator wrote its thread ids; the API cannot list them)"
"$TS" threads add --from-file "$DEMO/threads.txt"

step "threadsync sync (first sync: newest first, resumable)"
"$TS" --log-level warning sync

step "On the server: 25 new messages, one deleted, one's metadata edited"
control POST "threads/$FIRST/messages" '{"n": 25}' >/dev/null
pick() { control GET truth | "$BIN/python" -c "import json,sys; print(json.load(sys.stdin)['threads']['$FIRST'][$1]['id'])"; }
VICTIM=$(pick 3)
EDITED=$(pick 5)
control DELETE "threads/$FIRST/messages/$VICTIM" >/dev/null
control POST "threads/$FIRST/messages/$EDITED/metadata" '{"metadata": {"topic": "edited on the server"}}' >/dev/null
echo "appended 25 messages to $FIRST, deleted $VICTIM, edited the metadata of $EDITED"

step "threadsync sync (ordinary pass: one small request per idle thread)"
"$TS" --log-level warning sync

step "threadsync sync --full (reconcile: notices the deletion and the edit)"
"$TS" --log-level warning sync --full

step "threadsync status"
"$TS" status

step "threadsync export --format jsonl, and a readable transcript"
"$TS" export --format jsonl --out "$DEMO/messages.jsonl"
"$TS" export --format markdown --thread "$FIRST" --out "$DEMO/$FIRST.md"
head -c 600 "$DEMO/$FIRST.md"; echo " ..."

step "Check: the export equals the emulator's ground truth"
control GET truth | "$BIN/python" -c "
import json, sys
truth = json.load(sys.stdin)['threads']
want = [m for msgs in truth.values() for m in msgs]
got = [json.loads(line) for line in open('$DEMO/messages.jsonl', encoding='utf-8')]
assert got == want, 'export differs from the truth'
print(f'OK: {len(got)} messages in {len(truth)} threads, identical objects, identical order')
"

step "Metadata write-back: set locally, push through the modify endpoint"
MSG=$(control GET truth | "$BIN/python" -c "import json,sys; print(json.load(sys.stdin)['threads']['$FIRST'][0]['id'])")
"$TS" metadata set "$FIRST" "$MSG" reviewed=yes label=demo
"$TS" --log-level warning push
"$TS" metadata show "$FIRST" "$MSG"

step "Backup, verify, restore into a new mirror"
"$TS" --log-level warning backup --dest "$DEMO/backups"
"$TS" backup verify "$DEMO/backups"
SNAP=$(ls -d "$DEMO"/backups/threadsync-* | tail -n 1)
"$TS" restore "$SNAP" --database-url "sqlite:///$DEMO/restored.db"

step "Done: everything is under ./$DEMO"
