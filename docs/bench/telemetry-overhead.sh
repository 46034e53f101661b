#!/usr/bin/env bash
# Usage: docs/bench/telemetry-overhead.sh BIN MODE(off|metrics|on|sampled) DURATION  (metrics: endpoint only; on: endpoint + OTLP of every proposal; sampled: of one in 100)
# A 3-node cluster on 127.0.0.1; MODE=on: metrics endpoint on every node, scraped every
# second, and OTLP trace export to a local fake collector. Then one closed-loop write bench.
set -euo pipefail
BIN=$1; MODE=$2; DUR=$3
D=$(mktemp -d)
BASE=$((20000 + RANDOM % 10000))  # below the ephemeral range (32768-): a client socket cannot take a node's port
"$BIN" certs dev --dir "$D" --cluster bench --nodes 3 --base-port $BASE >/dev/null
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 $p 2>/dev/null || true; done; rm -rf "$D"; }
trap cleanup EXIT
if [ "$MODE" = on ] || [ "$MODE" = sampled ]; then  # OTLP export too
  python3 - "$D/collector.port" <<'PY' &
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get('Content-Length', 0)); self.rfile.read(n)
        self.send_response(200); self.send_header('Content-Length', '0'); self.end_headers()
    def log_message(self, *a): pass
s = socketserver.ThreadingTCPServer(('127.0.0.1', 0), H)
open(sys.argv[1], 'w').write(str(s.server_address[1]))
s.timeout = 1
import time; end = time.time() + 600
while time.time() < end: s.handle_request()
PY
  PIDS+=($!)
  for _ in $(seq 50); do [ -s "$D/collector.port" ] && break; sleep 0.1; done
  CP=$(cat "$D/collector.port")
  for i in 1 2 3; do sed -i "s|otlp_endpoint = \"\"|otlp_endpoint = \"http://127.0.0.1:$CP/v1/traces\"|" "$D/node-$i.toml"; done
  if [ "$MODE" = sampled ]; then for i in 1 2 3; do sed -i "s|trace_proposals_every = 1$|trace_proposals_every = 100|" "$D/node-$i.toml"; done; fi
fi
for i in 1 2 3; do
  if [ "$MODE" != off ]; then export QUORATE_METRICS_LISTEN=127.0.0.1:$((BASE + 100 + i)); else unset QUORATE_METRICS_LISTEN; fi
  "$BIN" node start --config "$D/node-$i.toml" > "$D/node-$i.log" 2>&1 &
  PIDS+=($!)
done
unset QUORATE_METRICS_LISTEN
if [ "$MODE" != off ]; then
  ( for s in $(seq $((DUR + 30))); do for i in 1 2 3; do curl -s -m 2 http://127.0.0.1:$((BASE + 100 + i))/metrics > /dev/null || true; done; sleep 1; done ) &
  PIDS+=($!)
fi
EP="1=127.0.0.1:$BASE,2=127.0.0.1:$((BASE+1)),3=127.0.0.1:$((BASE+2))"
export QUORATE_CERTS=$D/certs QUORATE_CLUSTER=bench QUORATE_ENDPOINTS=$EP QUORATE_TIMEOUT=10
for _ in $(seq 100); do "$BIN" kv put warm up >/dev/null 2>&1 && break; sleep 0.2; done
"$BIN" bench --clients 32 --read-ratio 0 --duration "$DUR" --value-size 256
