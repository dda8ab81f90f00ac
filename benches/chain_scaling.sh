#!/usr/bin/env bash
# Chains scale with cores (issue 16): a chain of N `forward` VM threads, each pinned to its
# own core, the switch on core 0, for N = 1..7 in alternating rounds of one run; medians and
# the ratio of each chain length to the 1-VM rate (the goal: >= 0.9x).
#
#   cargo build --release && benches/chain_scaling.sh [SECONDS] [ROUNDS] [MAX_VMS]
#
# Chain lengths that need more cores than this machine has (N VM cores + 1 switch core) are
# skipped and said so (FORCE=1 runs them anyway, VMs sharing cores). Traffic:
# `gen:flows=64,size=64,prefilled=1` -> switch -> v1 -> ... -> vN -> null, busy polling.
# NICE=-20 outweighs other work on a shared machine (root).
set -euo pipefail
cd "$(dirname "$0")/.."
NETVM=${NETVM:-target/release/netvm}
SECONDS_PER_RUN=${1:-3}
ROUNDS=${2:-3}
MAX_VMS=${3:-7}
PRIO=${NICE:+nice -n $NICE}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CORES=$(nproc)

LENGTHS=()
for n in $(seq "$MAX_VMS"); do
  if [ $((n + 1)) -le "$CORES" ] || [ "${FORCE:-0}" = 1 ]; then LENGTHS+=("$n")
  else echo "chain of $n VMs: skipped, needs $((n + 1)) cores and this machine has $CORES"; fi
done

run() { # N
  local n=$1 p="$WORK/c$1.nvr" stats="$WORK/c$1.json" names=() vmargs=() i
  { echo "port a"; echo "port b"
    for i in $(seq "$n"); do echo "vm v$i trusted"; names+=("v$i"); vmargs+=(--vm "v$i=forward"); done
    echo "rule all : ip => chain $(IFS=,; echo "${names[*]}" | sed 's/,/ -> /g') -> out b"
  } >"$p"
  local last=$((n < CORES - 1 ? n : CORES - 1))
  $PRIO "$NETVM" run "$p" --bind a=gen:flows=64,size=64,prefilled=1 --bind b=null "${vmargs[@]}" \
    --vm-mode thread --cores "0-$last" --hugepages prefer --control none \
    --duration "$SECONDS_PER_RUN" --stats-json "$stats" >"$WORK/c$n.log" 2>&1 \
    || { echo "chain of $n failed:" >&2; cat "$WORK/c$n.log" >&2; exit 1; }
  python3 -c "import json; s=json.load(open('$stats')); print(s['tx']/s['elapsed_s']/1e6)"
}

declare -A RATES
for round in $(seq "$ROUNDS"); do
  for n in "${LENGTHS[@]}"; do
    r=$(run "$n")
    printf 'round %d  %d VMs  %8.2f Mpps\n' "$round" "$n" "$r"
    RATES[$n]="${RATES[$n]:-} $r"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
[ ${#LENGTHS[@]} -eq 0 ] && exit 0
base=$(echo "${RATES[${LENGTHS[0]}]}" | median)
for n in "${LENGTHS[@]}"; do
  m=$(echo "${RATES[$n]}" | median)
  printf 'median %d VMs  %8.2f Mpps  %.2fx of %d VM\n' "$n" "$m" "$(python3 -c "print($m/$base)")" "${LENGTHS[0]}"
done
