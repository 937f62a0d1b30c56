#!/bin/bash
# Quiet by default: a testnet of PEERS peers while CLIENTS short-lived CLI clients come and go,
# one every GAP seconds; then every peer log's line count, dial-failure and traceback lines.
# Usage (from the repository root, in the virtualenv): bash tools/quiet_clients.sh [PEERS] [CLIENTS] [GAP]
# e.g. bash tools/quiet_clients.sh 4 20 50   (about 20 minutes)
set -u
PEERS=${1:-4}; CLIENTS=${2:-20}; GAP=${3:-50}
WORK=$(mktemp -d -t p2pinfer-quiet-XXXXXX)
export P2PINFER_HOME=${P2PINFER_HOME:-$WORK/home}
p2pinfer testnet --peers "$PEERS" --model p2pinfer-tiny-llama --port 0 --base-dir "$WORK/net" \
    > "$WORK/testnet.out" 2>&1 &
TN=$!
for _ in $(seq 1 240); do grep -q "^  p2pinfer infer" "$WORK/testnet.out" && break; sleep 1; done
CMD=$(grep "^  p2pinfer infer" "$WORK/testnet.out" | head -1 | sed 's/^  //')
if [ -z "$CMD" ]; then echo "the testnet did not start:"; cat "$WORK/testnet.out"; kill -INT $TN; exit 1; fi
start=$(date +%s); ok=0
for i in $(seq 1 "$CLIENTS"); do
  if eval "$CMD --max-new-tokens 2 --wait 60" > /dev/null 2>> "$WORK/clients.err"; then ok=$((ok + 1)); fi
  [ "$i" -lt "$CLIENTS" ] && sleep "$GAP"
done
end=$(date +%s)
kill -INT $TN; wait $TN; rc=$?
echo "$PEERS peers, $CLIENTS clients over $(( (end - start) / 60 )) min: $ok succeeded; testnet exit $rc"
fail=0
for f in "$WORK"/net/peer-*/node.log; do
  d=$(grep -c -i 'failed to' "$f"); t=$(grep -c Traceback "$f")
  echo "$(basename "$(dirname "$f")"): $(wc -l < "$f") log lines, $d dial-failure lines, $t tracebacks"
  [ "$d" -gt 1 ] || [ "$t" -gt 0 ] && fail=1
done
[ "$ok" -lt "$CLIENTS" ] && { echo "failed clients said:"; grep -i "error" "$WORK/clients.err" | tail -n 5; }
rm -rf "$WORK"
[ "$ok" -eq "$CLIENTS" ] && [ "$fail" -eq 0 ] && [ "$rc" -eq 0 ] && echo "quiet: ok" || { echo "quiet: FAILED"; exit 1; }
