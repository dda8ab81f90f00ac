#!/usr/bin/env bash
# netvm against Open vSwitch with its DPDK datapath (issue 20), alternating in one session:
# per round and case, OVS-DPDK (ovs-vswitchd-dpdk, one PMD thread on core 1), netvm (one
# switch thread on core 1) and dpdk-testpmd `io` and `5tswap` (one forwarding core, 1), on the
# same DPDK virtual devices and the same traffic. OVS gets the policy through
# `netvm export openflow` (and `ovs-ofctl set-frags br0 nx-match`, which that export needs).
# Rates are frames received per second on all ports of the switch.
#
#   cargo build --release --features dpdk && benches/ovs_dpdk.sh [SECONDS] [ROUNDS]
#   CASES="bench20 acl1_1k/1500" benches/ovs_dpdk.sh 5 3    # a subset of the cases
#
# The cases (64-byte frames):
#   bench20        benches/bench20.nvr (20 rules, its in_port rules forward), two net_null ports
#                  (all-zero frames: one flow)
#   acl1_1k/1500   ClassBench acl1_1k imported (`netvm import classbench`), the first 1,500
#                  lines of its trace as frames: net_pcap infinite_rx=1 in, net_null no-rx out
#   acl1_1k/100k   the same rules; 100,000 frames: the trace's 9,340 lines cycled, each frame
#                  with its own Ethernet source (100,000 distinct packets for OVS's exact-match
#                  cache; the rules read no Ethernet field, so the classification is the trace's)
#   fw1_1k/1500, fw1_1k/100k   the same with fw1_1k (8,135 trace lines)
#   prefix300      300 rules `ip.src in A/a and ip.dst in B/b => drop` with prefix lengths 8 to
#                  32 (seeded), 100,000 frames with random addresses, a third of them inside a
#                  rule's prefixes
#
# Needs root, huge pages (>= 600 free 2 MiB pages; a hugetlbfs is mounted in the work dir for
# OVS), ovs-vswitchd-dpdk (openvswitch-switch-dpdk), dpdk-testpmd (dpdk-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
NETVM=${NETVM:-target/release/netvm}
[ -x "$NETVM" ] || NETVM=${CARGO_TARGET_DIR:-target}/release/netvm
SECS=${1:-5}
ROUNDS=${2:-3}
CASES=(${CASES:-bench20 acl1_1k/1500 acl1_1k/100k fw1_1k/1500 fw1_1k/100k prefix300})
DATA=${DATA:-../shared/data/classbench}
[ -d "$DATA" ] || DATA=/work/shared/data/classbench
OVS_VSWITCHD=${OVS_VSWITCHD:-/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk}
SCHEMA=/usr/share/openvswitch/vswitch.ovsschema
WORK=$(mktemp -d /tmp/ovs-dpdk-bench.XXXXXX)
export OVS_RUNDIR=$WORK/ovs OVS_DBDIR=$WORK/ovs OVS_LOGDIR=$WORK/ovs

ovs_stop() {
  local p pid
  for p in ovs-vswitchd ovsdb-server; do
    if [ -f "$OVS_RUNDIR/$p.pid" ]; then
      pid=$(cat "$OVS_RUNDIR/$p.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$OVS_RUNDIR/$p.pid"
    fi
  done
}
cleanup() {
  ovs_stop
  mountpoint -q "$WORK/huge" && umount "$WORK/huge"
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/huge" "$OVS_RUNDIR"
mount -t hugetlbfs -o pagesize=2M nodev "$WORK/huge"

# --- traffic and policies ---------------------------------------------------------------
# prep CASE -> $WORK/CASE.nvr, and $WORK/CASE.pcap for the capture cases.
python3 - "$WORK" "$DATA" <<'PY'
import random, struct, sys
work, data = sys.argv[1], sys.argv[2]

def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

def frame(src, dst, sport, dport, proto, mac):
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x02, 8192, 0, 0)
    elif proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8, 0)
    elif proto == 1:
        l4 = struct.pack("!BBHHH", 8, 0, 0, 0, 0)
    else:
        l4 = b""
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    eth = bytes([2, 0, 0, 0, 0, 2]) + bytes([2, 0]) + struct.pack("!I", mac) + b"\x08\x00"
    f = eth + ip + l4
    return f + bytes(max(0, 60 - len(f)))

def write_pcap(path, frames):
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 65535, 1))
        for f in frames:
            out.write(struct.pack("<IIII", 0, 0, len(f), len(f)))
            out.write(f)

def trace(name):
    rows = []
    for line in open(f"{data}/{name}_trace"):
        c = line.split()
        if len(c) >= 5:
            rows.append(tuple(int(x) for x in c[:5]))
    return rows

for name in ("acl1_1k", "fw1_1k"):
    rows = trace(name)
    write_pcap(f"{work}/{name}_1500.pcap", [frame(*r, 1) for r in rows[:1500]])
    write_pcap(f"{work}/{name}_100k.pcap",
               [frame(*rows[i % len(rows)], i + 1) for i in range(100_000)])

rng = random.Random(20)
rules, nets = [], []
for r in range(300):
    la, lb = rng.randint(8, 32), rng.randint(8, 32)
    a = rng.getrandbits(32) & (0xffffffff << (32 - la)) & 0xffffffff
    b = rng.getrandbits(32) & (0xffffffff << (32 - lb)) & 0xffffffff
    nets.append((a, la, b, lb))
    ip = lambda v: ".".join(str(v >> s & 255) for s in (24, 16, 8, 0))
    rules.append(f"rule r{r} : ip.src in {ip(a)}/{la} and ip.dst in {ip(b)}/{lb} => drop")
with open(f"{work}/prefix300.nvr", "w") as out:
    out.write("# 300 rules of varied prefixes (benches/ovs_dpdk.sh, seed 20)\nport p0\nport src\n")
    out.write("\n".join(rules) + "\ndefault => out p0\n")
frames = []
for i in range(100_000):
    if i % 3 == 0:
        a, la, b, lb = nets[rng.randrange(300)]
        src = a | rng.getrandbits(32 - la) if la < 32 else a
        dst = b | rng.getrandbits(32 - lb) if lb < 32 else b
    else:
        src, dst = rng.getrandbits(32), rng.getrandbits(32)
    frames.append(frame(src, dst, rng.randrange(65536), rng.randrange(65536), 6, 1))
write_pcap(f"{work}/prefix300.pcap", frames)
PY
for name in acl1_1k fw1_1k; do
  # The imported policy has one port, p0 (the default's out); the capture comes in on `src`.
  "$NETVM" import classbench "$DATA/$name" | sed 's/^port p0$/port p0\nport src/' >"$WORK/$name.nvr"
done
cp benches/bench20.nvr "$WORK/bench20.nvr"

# CASE -> policy, the two devices (OpenFlow ports 1 and 2, in the policy's port order).
policy_of() { case $1 in bench20) echo bench20;; acl1_1k/*) echo acl1_1k;; fw1_1k/*) echo fw1_1k;; *) echo "$1";; esac; }
devices_of() {
  case $1 in
    bench20) echo "net_null0 net_null1";;
    */1500) echo "net_null0,no-rx=1 net_pcap0,rx_pcap=$WORK/${1%/*}_1500.pcap,infinite_rx=1";;
    */100k) echo "net_null0,no-rx=1 net_pcap0,rx_pcap=$WORK/${1%/*}_100k.pcap,infinite_rx=1";;
    prefix300) echo "net_null0,no-rx=1 net_pcap0,rx_pcap=$WORK/prefix300.pcap,infinite_rx=1";;
  esac
}
for c in "${CASES[@]}"; do
  p=$(policy_of "$c")
  [ -f "$WORK/$p.flows" ] || "$NETVM" export openflow "$WORK/$p.nvr" >"$WORK/$p.flows"
done

rate() { python3 -c "print($1 / $SECS / 1e6)"; }

run_ovs() { # CASE
  local p d1 d2 a b
  p=$(policy_of "$1"); read -r d1 d2 <<<"$(devices_of "$1")"
  ovs_stop; rm -f "$OVS_DBDIR/conf.db"
  ovsdb-tool create "$OVS_DBDIR/conf.db" "$SCHEMA"
  ovsdb-server "$OVS_DBDIR/conf.db" --remote="punix:$OVS_RUNDIR/db.sock" --pidfile --detach \
    --log-file
  local db="--db=unix:$OVS_RUNDIR/db.sock"
  ovs-vsctl "$db" --no-wait init -- set Open_vSwitch . other_config:dpdk-init=true \
    other_config:dpdk-socket-mem=1024 other_config:dpdk-lcore-mask=0x1 \
    other_config:pmd-cpu-mask=0x2 \
    "other_config:dpdk-extra=--no-pci --huge-dir=$WORK/huge --file-prefix=ovsbench$$"
  "$OVS_VSWITCHD" "unix:$OVS_RUNDIR/db.sock" --pidfile="$OVS_RUNDIR/ovs-vswitchd.pid" --detach \
    --log-file="$OVS_LOGDIR/ovs-vswitchd.log" \
    >>"$WORK/ovs.out" 2>&1 \
    || { echo "ovs-vswitchd-dpdk did not start:" >&2; tail -n 30 "$WORK/ovs.out" "$OVS_LOGDIR/ovs-vswitchd.log" >&2; exit 1; }
  ovs-vsctl "$db" add-br br0 -- set bridge br0 datapath_type=netdev \
    -- add-port br0 p1 -- set Interface p1 type=dpdk "options:dpdk-devargs=$d1" ofport_request=1 \
    -- add-port br0 p2 -- set Interface p2 type=dpdk "options:dpdk-devargs=$d2" ofport_request=2 \
    || { echo "OVS could not set up br0 for $1:" >&2; tail -n 30 "$OVS_LOGDIR/ovs-vswitchd.log" >&2; exit 1; }
  ovs-ofctl set-frags br0 nx-match
  ovs-ofctl del-flows br0
  ovs-ofctl add-flows br0 "$WORK/$p.flows"
  sleep 2
  a=$(ovs_rx); sleep "$SECS"; b=$(ovs_rx)
  [ "$b" -gt "$a" ] || { echo "OVS received nothing on $1:" >&2; tail -n 20 "$OVS_LOGDIR/ovs-vswitchd.log" >&2; exit 1; }
  rate "$((b - a))"
  ovs_stop
}
ovs_rx() { # frames received on every port of br0 but LOCAL, now
  ovs-ofctl dump-ports br0 | python3 -c '
import re, sys
t = sys.stdin.read()
print(sum(int(n) for p, n in re.findall(r"port\s+(\S+): rx pkts=(\d+)", t) if "LOCAL" not in p))'
}

run_netvm() { # CASE
  local p d1 d2 names json="$WORK/netvm.json"
  p=$(policy_of "$1"); read -r d1 d2 <<<"$(devices_of "$1")"
  names=$(grep -E '^port ' "$WORK/$p.nvr" | awk '{print $2}' | head -2 | xargs)
  read -r n1 n2 <<<"$names"
  "$NETVM" run "$WORK/$p.nvr" --bind "$n1=dpdk:$d1" --bind "$n2=dpdk:$d2" \
    --switch-threads 1 --cores 1 --duration "$SECS" --control none --buffers 131072 \
    --stats-json "$json" --hugepages require >"$WORK/netvm.log" 2>&1 \
    || { echo "netvm failed on $1:"; cat "$WORK/netvm.log"; exit 1; }
  python3 -c "import json; j = json.load(open('$json')); print(j['rx'] / j['elapsed_s'] / 1e6)"
}

run_testpmd() { # CASE MODE
  local d1 d2 out rx
  read -r d1 d2 <<<"$(devices_of "$1")"
  out=$( (sleep 3; echo "clear port stats all"; sleep "$SECS"; echo "show port stats all"; echo quit) |
    dpdk-testpmd -l 0,1 --no-pci --in-memory --file-prefix="tp$$" --vdev="$d1" --vdev="$d2" \
      --log-level=4 -- --forward-mode="$2" --total-num-mbufs=262144 --auto-start -i 2>&1)
  rx=$(echo "$out" | grep -E "RX-packets:" | head -2 | awk '{s += $2} END {print s}')
  rate "$rx"
}

echo "ovs_dpdk.sh: ${SECS}s per run, $ROUNDS rounds, cases ${CASES[*]}; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$WORK/rates"
for r in $(seq "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    o=$(run_ovs "$c"); n=$(run_netvm "$c"); io=$(run_testpmd "$c" io); sw=$(run_testpmd "$c" 5tswap)
    printf 'round %d %-13s OVS %7.2f  netvm %7.2f  testpmd io %7.2f 5tswap %7.2f Mpps  netvm/OVS %5.2fx\n' \
      "$r" "$c" "$o" "$n" "$io" "$sw" "$(python3 -c "print($n / $o)")"
    echo "$c $o $n $io $sw" >>"$WORK/rates"
  done
done
python3 - "$WORK/rates" <<'PY'
import statistics as st, sys
rows = {}
for line in open(sys.argv[1]):
    c, *v = line.split()
    rows.setdefault(c, []).append(list(map(float, v)))
print("| case | OVS-DPDK | netvm | testpmd io | testpmd 5tswap | netvm/OVS (median of rounds) | netvm/io |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for c, rs in rows.items():
    o, n, io, sw = zip(*rs)
    m = st.median
    print(f"| {c} | {m(o):.2f} | {m(n):.2f} | {m(io):.2f} | {m(sw):.2f} | "
          f"**{m([b / a for a, b in zip(o, n)]):.2f}x** ({', '.join(f'{b / a:.2f}' for a, b in zip(o, n))}) | "
          f"{m([b / a for a, b in zip(io, n)]):.2f} |")
PY
