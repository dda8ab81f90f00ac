#!/usr/bin/env bash
# Per-hop cost of VMs as separate processes (issue 5) next to the same chain with
# in-process VM threads, and untrusted against trusted, with the same binary in one run.
#
#   cargo build --release && benches/nf_processes.sh [SECONDS] [ROUNDS]
#
# Every configuration: gen (prefilled frames) -> switch -> chain -> null, busy polling,
# switch on core 0, VMs (threads or `netvm nf` processes) on core 1. Prints one line per
# run: config, Mpps, and at the end the medians and per-hop costs in ns:
#   per-hop = (1/rate(chain of N) - 1/rate(no VM)) / N.
set -euo pipefail
cd "$(dirname "$0")/.."
NETVM=${NETVM:-target/release/netvm}
SECONDS_PER_RUN=${1:-4}
ROUNDS=${2:-3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT

policy() { # NAME TRUST HOPS
  local f="$WORK/$1.nvr"
  { echo "port a"; echo "port b"
    case $3 in
      0) echo "rule all : ip => out b" ;;
      1) echo "vm fw $2"; echo "rule all : ip => chain fw -> out b" ;;
      2) echo "vm fw $2"; echo "vm mon $2"; echo "rule all : ip => chain fw -> mon -> out b" ;;
    esac; } > "$f"
  echo "$f"
}

run() { # LABEL SIZE TRUST HOPS MODE
  local label=$1 size=$2 trust=$3 hops=$4 mode=$5
  local p; p=$(policy "$label" "$trust" "$hops")
  local sock="$WORK/$label.sock" stats="$WORK/$label.json"
  local vmargs=() names=()
  [ "$hops" -ge 1 ] && names+=(fw)
  [ "$hops" -ge 2 ] && names+=(mon)
  for n in "${names[@]}"; do
    if [ "$mode" = process ]; then vmargs+=(--vm "$n=process"); else vmargs+=(--vm "$n=forward"); fi
  done
  "$NETVM" run "$p" --bind "a=gen:flows=64,size=$size,prefilled=1" --bind b=null \
    "${vmargs[@]}" --vm-mode thread --cores 0,1 --hugepages prefer --control "$sock" \
    --wait-for-vms 20 --duration "$SECONDS_PER_RUN" --stats-json "$stats" >"$WORK/$label.log" 2>&1 &
  local sw=$!
  if [ "$mode" = process ]; then
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
    for n in "${names[@]}"; do
      "$NETVM" nf forward --vm "$n" --control "$sock" --core 1 >"$WORK/$label-$n.log" 2>&1 &
    done
  fi
  wait "$sw" || { echo "run $label failed:"; cat "$WORK/$label.log"; exit 1; }
  wait || true
  python3 -c "import json,sys; s=json.load(open('$stats')); print(s['tx']/s['elapsed_s']/1e6)"
}

declare -A RATES
CONFIGS=(
  "base64 64 trusted 0 thread"
  "thread1 64 trusted 1 thread"
  "proc1 64 trusted 1 process"
  "thread2 64 trusted 2 thread"
  "proc2 64 trusted 2 process"
  "thread2u 64 untrusted 2 thread"
  "proc2u 64 untrusted 2 process"
  "base1500 1500 trusted 0 thread"
  "thread2t1500 1500 trusted 2 thread"
  "proc2t1500 1500 trusted 2 process"
  "thread2u1500 1500 untrusted 2 thread"
  "proc2u1500 1500 untrusted 2 process"
)
# ONLY="base64 thread1 proc1" limits the run to those configurations.
for r in $(seq "$ROUNDS"); do
  for c in "${CONFIGS[@]}"; do
    set -- $c
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $1 "* ]]; then continue; fi
    rate=$(run "$@")
    RATES[$1]="${RATES[$1]:-} $rate"
    printf 'round %d  %-12s %8.3f Mpps\n' "$r" "$1" "$rate"
  done
done
python3 - "$(declare -p RATES)" <<'PY'
import re, statistics, sys
rates = {k: [float(x) for x in v.split()] for k, v in re.findall(r'\[(\w+)\]="([^"]*)"', sys.argv[1])}
med = {k: statistics.median(v) for k, v in rates.items()}
print("\nmedians (Mpps):", ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
def hop(chain, base, n): return (1e3 / med[chain] - 1e3 / med[base]) / n
def have(*names): return all(n in med for n in names)
for label, chain, base, n in [
    ("in-process thread, 1 hop", "thread1", "base64", 1),
    ("NF process,        1 hop", "proc1", "base64", 1),
    ("in-process thread, 2 hops", "thread2", "base64", 2),
    ("NF process,        2 hops", "proc2", "base64", 2),
    ("thread untrusted 64 B, 2 hops", "thread2u", "base64", 2),
    ("NF process untrusted 64 B, 2 hops", "proc2u", "base64", 2),
    ("thread trusted 1500 B, 2 hops", "thread2t1500", "base1500", 2),
    ("NF process trusted 1500 B, 2 hops", "proc2t1500", "base1500", 2),
    ("thread untrusted 1500 B, 2 hops", "thread2u1500", "base1500", 2),
    ("NF process untrusted 1500 B, 2 hops", "proc2u1500", "base1500", 2),
]:
    if have(chain, base):
        print(f"per-hop {label}: {hop(chain, base, n):7.1f} ns")
if have('proc2', 'thread2', 'base64'):
    print(f"process/thread per-hop ratio, 2 hops: {hop('proc2','base64',2)/hop('thread2','base64',2):.2f}x")
if have('proc1', 'thread1', 'base64'):
    print(f"process/thread per-hop ratio, 1 hop:  {hop('proc1','base64',1)/hop('thread1','base64',1):.2f}x")
if have('proc2', 'proc2u', 'proc2t1500', 'proc2u1500'):
    print(f"NF processes, trusted/untrusted rate: 64 B {med['proc2']/med['proc2u']:.2f}x, 1500 B {med['proc2t1500']/med['proc2u1500']:.2f}x")
if have('thread2', 'thread2u', 'thread2t1500', 'thread2u1500'):
    print(f"threads,      trusted/untrusted rate: 64 B {med['thread2']/med['thread2u']:.2f}x, 1500 B {med['thread2t1500']/med['thread2u1500']:.2f}x")
PY
