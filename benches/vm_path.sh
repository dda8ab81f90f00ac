#!/usr/bin/env bash
# The VM path (issue 16): throughput through VMs on their own core, inline, as processes, and
# three of them sharing two cores, next to the no-VM rate, for one or more builds of netvm in
# alternating rounds of one run (so "before" and "after" see the same machine).
#
#   cargo build --release && benches/vm_path.sh [SECONDS] [ROUNDS]
#   NETVMS="before=/path/to/old/netvm after=target/release/netvm" benches/vm_path.sh 3 3
#   ONLY="novm64 thread64 proc64" benches/vm_path.sh      # a subset of the configurations
#   NICE=-20 benches/vm_path.sh     # on a machine others are compiling on: outweigh them (root)
#
# Every run: gen (prefilled frames, 64 flows) -> switch -> chain of `forward` VMs -> null,
# busy polling, `--cores 0,1` (switch on core 0, VMs on core 1; three VMs share it). Process
# VMs are `netvm nf forward` pinned to core 1, from the same build as the switch. Prints one
# line per run (build, configuration, Mpps), then per configuration the median of each build,
# its ratio to the same build's no-VM rate at that frame size, and the per-round ratio of
# each build to the first one.
#
# Idle CPU and latency at a light paced load come from the library bench next door:
#   cargo bench -p netvm-runtime --bench vm_latency -- 20000 2 3
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-3}
ROUNDS=${2:-2}
read -r -a BUILDS <<<"${NETVMS:-after=target/release/netvm}"
PRIO=${NICE:+nice -n $NICE}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT

policy() { # FILE TRUST HOPS
  { echo "port a"; echo "port b"
    local names=() i
    for i in $(seq "$3"); do echo "vm v$i $2"; names+=("v$i"); done
    if [ "$3" = 0 ]; then echo "rule all : ip => out b"
    else echo "rule all : ip => chain $(IFS=,; echo "${names[*]}" | sed 's/,/ -> /g') -> out b"; fi
  } >"$1"
}

run() { # NETVM LABEL SIZE TRUST HOPS MODE
  local netvm=$1 label=$2 size=$3 trust=$4 hops=$5 mode=$6
  local p="$WORK/$label.nvr" sock="$WORK/$label.sock" stats="$WORK/$label.json"
  policy "$p" "$trust" "$hops"
  local vmargs=() i
  for i in $(seq "$hops"); do
    if [ "$mode" = process ]; then vmargs+=(--vm "v$i=process"); else vmargs+=(--vm "v$i=forward"); fi
  done
  local vm_mode=thread
  [ "$mode" = inline ] && vm_mode=inline
  rm -f "$sock"
  $PRIO "$netvm" run "$p" --bind "a=gen:flows=64,size=$size,prefilled=1" --bind b=null \
    "${vmargs[@]}" --vm-mode "$vm_mode" --cores 0,1 --hugepages prefer --control "$sock" \
    --wait-for-vms 20 --duration "$SECONDS_PER_RUN" --stats-json "$stats" >"$WORK/$label.log" 2>&1 &
  local sw=$!
  if [ "$mode" = process ]; then
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
    for i in $(seq "$hops"); do
      $PRIO "$netvm" nf forward --vm "v$i" --control "$sock" --core 1 >"$WORK/$label-v$i.log" 2>&1 &
    done
  fi
  wait "$sw" || { echo "run $label failed:" >&2; cat "$WORK/$label.log" >&2; exit 1; }
  wait || true
  python3 -c "import json; s=json.load(open('$stats')); print(s['tx']/s['elapsed_s']/1e6)"
}

# label size trust hops mode
CONFIGS=(
  "novm64 64 trusted 0 inline"
  "inline64 64 trusted 1 inline"
  "thread64 64 trusted 1 thread"
  "proc64 64 trusted 1 process"
  "thread3x64 64 trusted 3 thread"
  "proc3x64 64 trusted 3 process"
  "inline64u 64 untrusted 1 inline"
  "thread64u 64 untrusted 1 thread"
  "proc64u 64 untrusted 1 process"
  "thread3x64u 64 untrusted 3 thread"
  "novm1500 1500 trusted 0 inline"
  "inline1500 1500 trusted 1 inline"
  "thread1500 1500 trusted 1 thread"
  "proc1500 1500 trusted 1 process"
  "thread3x1500 1500 trusted 3 thread"
  "thread1500u 1500 untrusted 1 thread"
)
if [ -n "${ONLY:-}" ]; then
  kept=()
  for c in "${CONFIGS[@]}"; do
    for o in $ONLY; do [ "${c%% *}" = "$o" ] && kept+=("$c"); done
  done
  CONFIGS=("${kept[@]}")
fi

declare -A RATES
for round in $(seq "$ROUNDS"); do
  for c in "${CONFIGS[@]}"; do
    read -r label size trust hops mode <<<"$c"
    for b in "${BUILDS[@]}"; do
      name=${b%%=*} netvm=${b#*=}
      r=$(run "$netvm" "$label" "$size" "$trust" "$hops" "$mode")
      printf 'round %d  %-7s %-13s %8.2f Mpps\n' "$round" "$name" "$label" "$r"
      RATES[$name/$label]="${RATES[$name/$label]:-} $r"
    done
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
first=${BUILDS[0]%%=*}
for c in "${CONFIGS[@]}"; do
  read -r label size _ <<<"$c"
  line=$(printf '%-13s' "$label")
  for b in "${BUILDS[@]}"; do
    name=${b%%=*}
    m=$(echo "${RATES[$name/$label]}" | median)
    base=${RATES[$name/novm$size]:-}
    vs=""
    [ -n "$base" ] && vs=$(python3 -c "print(f' ({$m/$(echo "$base" | median):.2f}x no VM)')")
    line+=$(printf '  %s %6.2f%s' "$name" "$m" "$vs")
    if [ "$name" != "$first" ]; then
      ratios=$(python3 -c "
a='${RATES[$first/$label]}'.split(); b='${RATES[$name/$label]}'.split()
print(' '.join(f'{float(y)/float(x):.2f}' for x, y in zip(a, b)))")
      line+="  per-round $name/$first: $ratios"
    fi
  done
  echo "median $line"
done
