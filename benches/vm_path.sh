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
# Last, the CPU an idle VM uses (a thread, and a `netvm nf` process) for each build: a pcap
# replayed at 2 frames/s through one VM for 5 s, the VM's CPU time between 1.5 s and 4.5 s.
# Latency at a light paced load comes from the library bench next door:
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

# Idle VMs: CPU time (utime + stime) of the VM thread or process over 3 s of 2 frames/s.
python3 - "$WORK/light.pcap" <<'PY'
import struct, sys
eth = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
ip = bytearray.fromhex("450000320000000040110000") + bytes.fromhex("0a0000010a000002")
s = sum(struct.unpack("!10H", bytes(ip))); s = (s & 0xffff) + (s >> 16)
ip[10:12] = struct.pack("!H", ~s & 0xffff)
frame = eth + bytes(ip) + struct.pack("!HHHH", 1000, 2000, 30, 0) + bytes(22)
with open(sys.argv[1], "wb") as out:
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i in range(50):
        out.write(struct.pack("<IIII", i, 0, len(frame), len(frame)) + frame)
PY
ticks() { # PID [THREAD-NAME]: utime + stime in clock ticks
  local f
  if [ -n "${2:-}" ]; then
    for f in /proc/"$1"/task/*; do
      [ "$(cat "$f/comm" 2>/dev/null)" = "$2" ] && awk '{print $14 + $15}' "$f/stat" && return
    done
    echo 0
  else awk '{print $14 + $15}' /proc/"$1"/stat; fi
}
idle_cpu() { # NETVM MODE
  local netvm=$1 mode=$2 sock="$WORK/idle.sock" p="$WORK/idle.nvr" vm=forward pid nf=""
  policy "$p" trusted 1
  [ "$mode" = process ] && vm=process
  rm -f "$sock"
  $PRIO "$netvm" run "$p" --bind "a=pcap:rx=$WORK/light.pcap,pps=2" --bind b=null \
    --vm "v1=$vm" --vm-mode thread --cores 0,1 --control "$sock" --wait-for-vms 20 \
    --duration 6 >"$WORK/idle.log" 2>&1 &
  pid=$!
  if [ "$mode" = process ]; then
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
    $PRIO "$netvm" nf forward --vm v1 --control "$sock" --core 1 >"$WORK/idle-nf.log" 2>&1 &
    nf=$!
  fi
  sleep 1.5
  local a b hz
  hz=$(getconf CLK_TCK)
  if [ -n "$nf" ]; then a=$(ticks "$nf"); else a=$(ticks "$pid" netvm-vm0); fi
  sleep 3
  if [ -n "$nf" ]; then b=$(ticks "$nf"); else b=$(ticks "$pid" netvm-vm0); fi
  wait "$pid" || true
  wait || true
  python3 -c "print(f'{($b - $a) / $hz / 3 * 100:.1f}')"
}
for b in "${BUILDS[@]}"; do
  name=${b%%=*} netvm=${b#*=}
  printf 'idle VM CPU  %-7s thread %5s%% of a core   process %5s%% of a core\n' "$name" \
    "$(idle_cpu "$netvm" thread)" "$(idle_cpu "$netvm" process)"
done
