#!/usr/bin/env bash
# The foundry profile with Entra tokens from a managed identity, end to end against the emulator:
# the emulator plays both the Foundry project (which takes only Entra tokens, like the real
# service) and the App Service managed-identity endpoint azure-identity asks for tokens.
# On Azure the same variables apply minus IDENTITY_*: the platform sets those (see the README,
# "Connecting to a live service").
# Everything it makes lives in $DEMO_DIR (default ./demo-foundry/, removed and remade).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
TS="$BIN/threadsync"
DEMO=${DEMO_DIR:-demo-foundry}
rm -rf "$DEMO" && mkdir -p "$DEMO"

source scripts/lib.sh
HEADER="id-$("$BIN/python" -c 'import secrets; print(secrets.token_hex(8))')"

step "Start the emulator on $URL: Foundry takes Entra tokens only, tokens live 20 s"
"$TS" --log-level warning emulator --port "$PORT" --api-key "$KEY" --seed 7 --threads 3 \
  --messages 120 --entra foundry --token-lifetime 20 --identity-header "$HEADER" \
  >"$DEMO/emulator.log" 2>&1 &
EMU=$!
trap 'kill $EMU 2>/dev/null || true' EXIT
wait_for_emulator identity

# What a Foundry user sets: the project endpoint, the profile, Entra tokens from a managed identity.
unset AZURE_OPENAI_API_KEY OPENAI_API_KEY AZURE_OPENAI_ENDPOINT OPENAI_BASE_URL
export THREADSYNC_API__PROFILE=foundry
export THREADSYNC_API__ENDPOINT="$URL/api/projects/demo"
export THREADSYNC_API__AUTH=entra
export THREADSYNC_API__CREDENTIAL=managed-identity
# Set by App Service / Container Apps on Azure; here they point at the emulator.
export IDENTITY_ENDPOINT="$URL/msi/token" IDENTITY_HEADER="$HEADER"
export THREADSYNC_DATABASE_URL="sqlite:///$DEMO/threadsync.db" THREADSYNC_LOG__FORMAT=console
THREADS=$(control GET truth | field '["threads"]' | "$BIN/python" -c 'import ast,sys; print(" ".join(ast.literal_eval(sys.stdin.read())))')
FIRST=${THREADS%% *}

step "threadsync threads add"
"$TS" threads add $THREADS

step "A key is no Entra token: Foundry answers 401 (exit 2: the run stops at once, the message says why)"
set +e
(
  export THREADSYNC_API__AUTH=bearer AZURE_OPENAI_API_KEY="$KEY"
  export THREADSYNC_DATABASE_URL="sqlite:///$DEMO/refused.db"
  "$TS" threads add "$FIRST" >/dev/null
  "$TS" --log-level error sync 2>&1 | tail -n 2
  exit "${PIPESTATUS[0]}"
)
refused=$?
set -e
echo "exit code: $refused"

step "threadsync sync (tokens from ManagedIdentityCredential, one token for every request)"
"$TS" --log-level warning sync
echo "tokens issued: $(control GET identity | field '["issued"]')"

step "New messages arrive; the token endpoint fails twice (503) before answering"
control POST "threads/$FIRST/messages" '{"n": 15}' >/dev/null
control POST identity '{"outage": {"status": 503, "times": 2}}' >/dev/null
"$TS" --log-level warning sync
echo "tokens issued: $(control GET identity | field '["issued"]'), refused: $(control GET identity | field '["refused"]')"

step "threadsync status"
"$TS" status

step "threadsync export, checked against the emulator's ground truth"
"$TS" export --format jsonl --out "$DEMO/messages.jsonl"
control GET truth | "$BIN/python" -c "
import json, sys
truth = json.load(sys.stdin)['threads']
want = [m for msgs in truth.values() for m in msgs]
got = [json.loads(line) for line in open('$DEMO/messages.jsonl', encoding='utf-8')]
assert got == want, 'export differs from the truth'
print(f'OK: {len(got)} messages in {len(truth)} threads, identical objects, identical order')
"
test "$refused" -eq 2

step "Done: everything is under $DEMO/"
