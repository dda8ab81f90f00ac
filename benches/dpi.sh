#!/usr/bin/env bash
# DPI (issue 21): netvm's payload engine against Hyperscan on the same payloads, same run.
#
#   cargo build --release -p netvm && benches/dpi.sh [ROUNDS]
#
# For every case — KIND (`lit`: N rules `tcp and payload contains "..."`; `re`: N rules
# `tcp and payload matches /.../`, URL-path and SQL-keyword shapes, half `/i`), payload size
# and share of packets with a match — benches/dpi/gen.py writes a policy, the same patterns
# for Hyperscan and 2,000 TCP packets of HTTP-like text. Then, in alternating rounds:
# `netvm bench POLICY --pcap FRAMES --jit-only` (the JIT, parse and rules included) and
# benches/dpi/hs_bench (libhs block mode, HS_FLAG_SINGLEMATCH, one database of all patterns,
# payloads in memory). One core each. Prints one line per case and round, then per case the
# median Mpps of each, Gbit/s of payload, the median of the per-round ratios netvm/Hyperscan,
# netvm's compile time and payload-engine memory, and Hyperscan's database size.
#
# Cases: LITS (default "10 100 1000 10000"), RES ("10 100 1000"), SIZES ("64 512 1500"),
# PCTS ("0 1"); RUNS (3) and RUN_MS (100) per engine and round. NETVM_BEFORE=BINARY also
# measures an older netvm in the same rounds (the before/after of BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
NETVM=${NETVM:-${CARGO_TARGET_DIR:-target}/release/netvm}
ROUNDS=${1:-3}
LITS=${LITS:-10 100 1000 10000}
RES=${RES:-10 100 1000}
SIZES=${SIZES:-64 512 1500}
PCTS=${PCTS:-0 1}
RUNS=${RUNS:-3}
RUN_MS=${RUN_MS:-100}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

[ -x "$NETVM" ] || { echo "no netvm binary at $NETVM (cargo build --release -p netvm)"; exit 1; }
# shellcheck disable=SC2046
cc -O2 -o "$WORK/hs_bench" benches/dpi/hs_bench.c $(pkg-config --cflags --libs libhs)

# Reload: 10,000 literals and 1,000 regexes in one policy, `netvm check` and the JIT's
# compile (netvm bench's "checked in", "compiled in" and payload-engine line).
if [ "${COMPILE:-1}" = 1 ]; then
  mkdir -p "$WORK/mix"
  python3 benches/dpi/gen.py mix 10000 0 0 "$WORK/mix" >/dev/null
  for round in $(seq "$ROUNDS"); do
    t0=$(date +%s.%N)
    "$NETVM" check "$WORK/mix/policy.nvr" 2>/dev/null
    t1=$(date +%s.%N)
    out=$("$NETVM" bench "$WORK/mix/policy.nvr" --pcap "$WORK/mix/frames.pcap" --jit-only --runs 1 --run-ms 1)
    printf 'round %d  10000 literals + 1000 regexes: netvm check %.0f ms (whole process); %s; %s\n' "$round" \
      "$(python3 -c "print(($t1-$t0)*1e3)")" "$(grep -o 'checked in [0-9.]* ms' <<<"$out")" \
      "$(grep -o 'compiled in [0-9.]* ms' <<<"$out")"
  done
  grep -o 'payload engine .*' <<<"$out" || true
fi

CASES=()
for kind in lit re; do
  counts=$LITS
  [ "$kind" = re ] && counts=$RES
  for n in $counts; do
    for size in $SIZES; do
      for pct in $PCTS; do
        c="$kind-$n-$size-$pct"
        mkdir -p "$WORK/$c"
        expect=$(python3 benches/dpi/gen.py "$kind" "$n" "$size" "$pct" "$WORK/$c")
        echo "$expect" >"$WORK/$c/expect"
        CASES+=("$c")
      done
    done
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
declare -A NV HS RATIO INFO OLD
for round in $(seq "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    d="$WORK/$c"
    out=$("$NETVM" bench "$d/policy.nvr" --pcap "$d/frames.pcap" --jit-only --runs "$RUNS" --run-ms "$RUN_MS")
    nv=$(awk '$1 == "jit" {print $2}' <<<"$out")
    INFO[$c]=$(grep -o 'compiled in [0-9.]* ms' <<<"$out" | head -1)"; "$(grep -o 'payload engine .*built in [0-9.]* ms' <<<"$out" | head -1)
    read -r _ hs _ matched _ db _ _ < <("$WORK/hs_bench" "$d/patterns" "$d/frames.pcap" "$RUNS" "$RUN_MS")
    [ "$matched" = "$(cat "$d/expect")" ] || { echo "$c: Hyperscan matched $matched packets, expected $(cat "$d/expect")"; exit 1; }
    r=$(python3 -c "print(f'{$nv/$hs:.3f}')")
    if [ -n "${NETVM_BEFORE:-}" ]; then
      old=$("$NETVM_BEFORE" bench "$d/policy.nvr" --pcap "$d/frames.pcap" --jit-only --runs "$RUNS" --run-ms "$RUN_MS" | awk '$1 == "jit" {print $2}')
      OLD[$c]="${OLD[$c]:-} $old"
      printf 'round %d  %-16s before %8.3f Mpps\n' "$round" "$c" "$old"
    fi
    printf 'round %d  %-16s netvm %8.3f Mpps  hyperscan %8.3f Mpps  %6.3fx\n' "$round" "$c" "$nv" "$hs" "$r"
    NV[$c]="${NV[$c]:-} $nv"
    HS[$c]="${HS[$c]:-} $hs"
    RATIO[$c]="${RATIO[$c]:-} $r"
    INFO[$c]="${INFO[$c]}; hs db $((db / 1024)) KiB"
  done
done
echo
printf '%-16s %10s %9s %10s %9s %7s %10s  %s\n' case netvm_Mpps Gbit/s hs_Mpps Gbit/s ratio before_Mpps "netvm compile; payload engine; hs db"
for c in "${CASES[@]}"; do
  size=$(cut -d- -f3 <<<"$c")
  nv=$(echo "${NV[$c]}" | median)
  hs=$(echo "${HS[$c]}" | median)
  r=$(echo "${RATIO[$c]}" | median)
  old=$(echo "${OLD[$c]:-0}" | median)
  printf '%-16s %10.3f %9.2f %10.3f %9.2f %6.3fx %10.3f  %s\n' "$c" "$nv" \
    "$(python3 -c "print($nv*$size*8/1e3)")" "$hs" "$(python3 -c "print($hs*$size*8/1e3)")" "$r" "$old" "${INFO[$c]}"
done
