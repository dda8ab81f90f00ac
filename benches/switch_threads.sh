#!/usr/bin/env bash
# Switch-thread scaling (issue 7's RSS): the same policy and traffic with 1, 2, ... switch
# threads, alternating in one session, same binary.
#
#   cargo build --release [--features dpdk] && benches/switch_threads.sh [SECONDS] [ROUNDS] [THREADS...]
#
# Traffic: `gen:flows=256,size=64,prefilled=1` split over the switch threads as RSS would
# split it (flow f to thread f % N), through benches/bench20.nvr (20 rules, JIT: 18 five-tuple
# drops that do not match, then `out b`) to a `null` sink that every thread shares out. With
# DPDK=1, `dpdk:net_null0,rxq=N,txq=N` -> `dpdk:net_null1,rxq=N,txq=N` instead (both
# directions, like testpmd's io mode). Busy polling, switch threads on cores 0..N-1.
# Prints one line per run and the median Mpps per thread count, and the ratio to 1 thread.
set -euo pipefail
cd "$(dirname "$0")/.."
NETVM=${NETVM:-target/release/netvm}
SECONDS_PER_RUN=${1:-4}
ROUNDS=${2:-3}
shift $(( $# >= 2 ? 2 : $# ))
THREADS=("$@")
[ ${#THREADS[@]} -eq 0 ] && THREADS=(1 2)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

P=benches/bench20.nvr

run() { # THREADS
  local n=$1 stats="$WORK/t$1.json" cores binds
  cores=$(seq -s, 0 $((n - 1)))
  if [ "${DPDK:-0}" = 1 ]; then
    binds=(--bind "a=dpdk:net_null0,rxq=$n,txq=$n" --bind "b=dpdk:net_null1,rxq=$n,txq=$n")
  else
    binds=(--bind "a=gen:flows=256,size=64,prefilled=1" --bind b=null)
  fi
  "$NETVM" run "$P" "${binds[@]}" --switch-threads "$n" --cores "$cores" --hugepages prefer \
    --control none --duration "$SECONDS_PER_RUN" --stats-json "$stats" >"$WORK/t$n.log" 2>&1 \
    || { echo "run with $n threads failed:"; cat "$WORK/t$n.log"; exit 1; }
  python3 -c "import json; s=json.load(open('$stats')); print(s['rx']/s['elapsed_s']/1e6)"
}

declare -A RATES
for round in $(seq "$ROUNDS"); do
  for n in "${THREADS[@]}"; do
    r=$(run "$n")
    printf 'round %d  %2d switch threads  %8.2f Mpps\n' "$round" "$n" "$r"
    RATES[$n]="${RATES[$n]:-} $r"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
base=$(echo "${RATES[${THREADS[0]}]}" | median)
for n in "${THREADS[@]}"; do
  m=$(echo "${RATES[$n]}" | median)
  printf 'median %2d switch threads  %8.2f Mpps  %.2fx of %d thread(s)\n' "$n" "$m" \
    "$(python3 -c "print($m/$base)")" "${THREADS[0]}"
done
