#!/usr/bin/env bash
# netvm's JIT against DPDK rte_acl (`dpdk-test-acl`) on the shared ClassBench sets, alternating
# in one session: each round runs, per set, `netvm bench --jit-only` (frames built from the
# trace, parsing included, bursts of 32) and then dpdk-test-acl with each algorithm (headers
# pre-parsed into tuples, 20 iterations over the trace). Prints one line per run, then per set
# the medians and the median of the per-round ratios netvm / rte_acl.
#
#   cargo build --release -p netvm && benches/classbench_acl.sh [ROUNDS] [SET...]
#   ALGS="scalar avx2 avx512x16" ...   # the rte_acl algorithms (default: these three)
#
# Needs ../shared/data/classbench (or DATA=DIR) and `dpdk-test-acl` (Debian's `dpdk`). The
# Debian build may crash in its clean-up after printing, so its output is read line-buffered.
set -uo pipefail
cd "$(dirname "$0")/.."
NETVM=${NETVM:-${CARGO_TARGET_DIR:-target}/release/netvm}
DATA=${DATA:-../shared/data/classbench}
ROUNDS=${1:-3}
shift || true
SETS=("$@")
[ ${#SETS[@]} -eq 0 ] && SETS=(acl1_1k fw1_1k acl1_10k fw1_10k ipc2_10k acl1_100k fw1_100k)
ALGS=(${ALGS:-scalar avx2 avx512x16})
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
RESULTS="$WORK/results"

for set in "${SETS[@]}"; do
  "$NETVM" import classbench "$DATA/$set" >"$WORK/$set.nvr" || exit 1
done

acl() { # SET ALG -> Mpps
  (cd "$DATA" && timeout 300 stdbuf -oL dpdk-test-acl -l 0 -n 1 --no-pci --no-huge -m 4096 \
    --file-prefix="acl$$" -- --rulesf="$1" --tracef="$1_trace" --tracenum=1000000 --iter=20 \
    --verbose=1 --alg="$2" 2>&1) |
    sed -n 's/.* \([0-9.]*\) pkt\/sec.*/\1/p' | tail -1 | awk '{printf "%.3f", $1 / 1e6}'
}

jit() { # SET -> Mpps
  "$NETVM" bench "$WORK/$1.nvr" --trace "$DATA/$1_trace" --jit-only --runs 3 --run-ms 300 |
    awk '$1 == "jit" {print $2}'
}

for round in $(seq "$ROUNDS"); do
  for set in "${SETS[@]}"; do
    r=$(jit "$set"); echo "round $round $set netvm ${r:-fail}"; echo "$round $set netvm ${r:-nan}" >>"$RESULTS"
    for alg in "${ALGS[@]}"; do
      r=$(acl "$set" "$alg"); echo "round $round $set rte_acl-$alg ${r:-fail}"
      echo "$round $set rte_acl-$alg ${r:-nan}" >>"$RESULTS"
    done
  done
done

python3 - "$RESULTS" <<'PY'
import sys, statistics, collections
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    rnd, s, who, v = line.split()
    runs[(s, who)][rnd] = float(v)
sets = list(dict.fromkeys(k[0] for k in runs))
whos = list(dict.fromkeys(k[1] for k in runs))
print("\nset | " + " | ".join(f"{w} Mpps" for w in whos) + " | " +
      " | ".join(f"netvm/{w}" for w in whos if w != "netvm"))
for s in sets:
    med = lambda w: statistics.median(runs[(s, w)].values())
    cells = [f"{med(w):.2f}" for w in whos]
    ratios = []
    for w in whos:
        if w == "netvm":
            continue
        rs = [runs[(s, "netvm")][r] / v for r, v in runs[(s, w)].items() if v > 0 and r in runs[(s, "netvm")]]
        ratios.append(f"{statistics.median(rs):.2f}x" if rs else "-")
    print(f"{s} | " + " | ".join(cells) + " | " + " | ".join(ratios))
PY
