#!/usr/bin/env bash
# netvm on DPDK against DPDK's own forwarder (issue 7), alternating in one session:
# each round runs `dpdk-testpmd --forward-mode=io` on net_null0 <-> net_null1 (one forwarding
# core), then netvm on the same two devices with benches/bench20.nvr (20 rules, JIT) on one
# switch core, then netvm with 2 switch threads (rxq=2,txq=2 on both devices, cores 0-1).
#
#   cargo build --release --features dpdk && benches/dpdk_testpmd.sh [SECONDS] [ROUNDS]
#   NOHUGE=1 ...   # testpmd --no-huge -m 1024, netvm --hugepages off --eal '--no-huge -m 256'
#   PEERS="io 5tswap" ...   # also testpmd in another forwarding mode each round (5tswap
#                           # reads and swaps the L2-L4 addresses of every frame: a peer
#                           # that touches each frame's headers, as classifying must)
#
# Rates are frames received per second on both ports (every frame is sent on). Prints one
# line per run, then medians and the median of the per-round ratios to testpmd.
set -euo pipefail
cd "$(dirname "$0")/.."
NETVM=${NETVM:-target/release/netvm}
SECS=${1:-5}
ROUNDS=${2:-5}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ "${NOHUGE:-0}" = 1 ]; then
  TP_MEM=(--no-huge -m 1024); NV_MEM=(--hugepages off --eal "--no-huge -m 256")
else
  TP_MEM=(--in-memory); NV_MEM=(--hugepages require)
fi

PEERS=(${PEERS:-io})

testpmd() { # MODE
  local out rx
  out=$( (sleep 2; echo "clear port stats all"; sleep "$SECS"; echo "show port stats all"; echo quit) |
    dpdk-testpmd -l 0,1 --no-pci "${TP_MEM[@]}" --file-prefix="tp$$" --vdev=net_null0 \
      --vdev=net_null1 --log-level=4 -- --forward-mode="$1" --total-num-mbufs=16384 \
      --auto-start -i 2>&1)
  rx=$(echo "$out" | grep -E "RX-packets:" | head -2 | awk '{s += $2} END {print s}')
  python3 -c "print($rx / $SECS / 1e6)"
}

netvm() { # THREADS CORES
  local n=$1 json="$WORK/netvm$1.json" q=""
  [ "$n" -gt 1 ] && q=",rxq=$n,txq=$n"
  "$NETVM" run benches/bench20.nvr --bind "a=dpdk:net_null0$q" --bind "b=dpdk:net_null1$q" \
    --switch-threads "$n" --cores "$2" --duration "$SECS" --control none \
    --stats-json "$json" "${NV_MEM[@]}" >"$WORK/netvm$n.log" 2>&1 \
    || { echo "netvm with $n threads failed:"; cat "$WORK/netvm$n.log"; exit 1; }
  python3 -c "import json; j = json.load(open('$json')); print(j['rx'] / j['elapsed_s'] / 1e6)"
}

: >"$WORK/rates"
for r in $(seq "$ROUNDS"); do
  peers=()
  for mode in "${PEERS[@]}"; do peers+=("$(testpmd "$mode")"); done
  one=$(netvm 1 1); two=$(netvm 2 0-1)
  printf 'round %d  testpmd' "$r"
  for i in "${!PEERS[@]}"; do printf ' %s %6.2f' "${PEERS[$i]}" "${peers[$i]}"; done
  printf '  netvm 1 thread %6.2f  netvm 2 threads %6.2f Mpps\n' "$one" "$two"
  echo "${peers[*]} $one $two" >>"$WORK/rates"
done
python3 - "$WORK/rates" "${PEERS[@]}" <<'PY'
import statistics as st, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
modes = sys.argv[2:]
med = lambda xs: st.median(xs)
cols = list(zip(*rows))
one, two = cols[-2], cols[-1]
peers = ", ".join(f"testpmd {m} {med(c):.2f}" for m, c in zip(modes, cols))
print(f"median Mpps: {peers}, netvm 1 thread {med(one):.2f}, 2 threads {med(two):.2f}")
for m, c in zip(modes, cols):
    print(f"median per-round ratio: 1 thread / testpmd {m} {med([o / x for o, x in zip(one, c)]):.3f}")
print(f"median per-round ratio: 2 threads / 1 thread {med([w / o for w, o in zip(two, one)]):.2f}")
PY
