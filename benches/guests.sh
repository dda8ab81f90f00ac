#!/usr/bin/env bash
# VMs in QEMU guests (issue 15): boot-to-attach time, and the per-hop cost of a guest NF
# against the same NF as a process, with the same binary in one run, alternating rounds.
#
#   cargo build --release --bin netvm
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
#       cargo build --release -p netvm-guest --target x86_64-unknown-linux-gnu
#   NETVM_GUEST_KERNEL=.../vmlinuz benches/guests.sh [SECONDS] [ROUNDS]
#
# Each run: gen (64 B, prefilled) -> switch -> one VM `fw` (forward) -> null, backpressure
# instead of drops (--vm-stall-ms 60000). The VM is `netvm nf forward` (process) or a
# guest running forward. Throughput is sampled from `netvm status` over SECONDS once the VM
# is attached (so boot time is not in it); per-packet cost = 1 / rate. A guest under TCG is
# EMULATED: its numbers say the path works and what emulation costs, not what a KVM guest
# would do; rerun this on a KVM host (accel=auto picks KVM there) for speed.
set -euo pipefail
cd "$(dirname "$0")/.."
NETVM=${NETVM:-target/release/netvm}
SECONDS_PER_RUN=${1:-5}
ROUNDS=${2:-3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT
: "${NETVM_GUEST_KERNEL:?set NETVM_GUEST_KERNEL to a guest vmlinuz (docs/guests.md)}"
"$NETVM" guest image -o "$WORK/guest.cpio" >/dev/null 2>&1 || { "$NETVM" guest image -o "$WORK/guest.cpio"; exit 1; }

cat > "$WORK/p.nvr" <<'EOF'
port a
port b
vm fw trusted
rule all : ip => chain fw -> out b
EOF

tx_of() { "$NETVM" status --json --control "$1" | jq '.ports[1].tx_packets'; }
state_of() { "$NETVM" status --json --control "$1" 2>/dev/null | jq -r '.vms[0].state' || echo none; }

run() { # LABEL MODE -> prints "Mpps boot_s"
  local label=$1 mode=$2 sock="$WORK/$1.sock" stats="$WORK/$1.json" spec
  if [ "$mode" = guest ]; then
    spec="fw=guest:image=$WORK/guest.cpio,console=$WORK/$label.console,nf=forward"
  else
    spec="fw=process"
  fi
  "$NETVM" run "$WORK/p.nvr" --bind a=gen:flows=64,size=64,prefilled=1 --bind b=null \
    --vm "$spec" --control "$sock" --wait-for-vms 120 --vm-stall-ms 60000 --idle sleep \
    --duration 600 --stats-json "$stats" >"$WORK/$label.log" 2>&1 &
  local sw=$!
  for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
  if [ "$mode" = process ]; then
    "$NETVM" nf forward --vm fw --control "$sock" --idle sleep >"$WORK/$label-nf.log" 2>&1 &
  fi
  for _ in $(seq 1200); do [ "$(state_of "$sock")" = up ] && break; sleep 0.1; done
  sleep 1
  local t0 x0 t1 x1
  t0=$(date +%s.%N); x0=$(tx_of "$sock")
  sleep "$SECONDS_PER_RUN"
  t1=$(date +%s.%N); x1=$(tx_of "$sock")
  kill -INT "$sw"; wait "$sw" || true
  wait || true
  local boot copied
  boot=$(jq -r '(.guests // [])[0].boot_to_attach_s[0] // "-"' "$stats")
  copied=$(jq -r '.vms[0].copied_bytes' "$stats")
  python3 -c "print(f'{($x1-$x0)/($t1-$t0)/1e6:.4f} $boot $copied')"
}

declare -a PROC GUEST BOOT
echo "round  process Mpps  guest Mpps  guest/process (rates)  boot-to-attach s  guest copied B  ($(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg))"
for r in $(seq "$ROUNDS"); do
  read -r p _ _ < <(run "proc$r" process)
  read -r g b c < <(run "guest$r" guest)
  PROC+=("$p"); GUEST+=("$g"); BOOT+=("$b")
  python3 -c "b='$b'; print(f'{$r:5d}  {$p:12.4f}  {$g:10.4f}  {$g/$p:13.3f}  {(f\"{float(b):.2f}\" if b != \"-\" else b):>16}  {$c:>14}')"
done
python3 - "${PROC[*]}" "${GUEST[*]}" "${BOOT[*]}" <<'EOF'
import statistics, sys
p = [float(x) for x in sys.argv[1].split()]
g = [float(x) for x in sys.argv[2].split()]
b = [float(x) for x in sys.argv[3].split() if x != "-"]
mp, mg = statistics.median(p), statistics.median(g)
print(f"median: process {mp:.4f} Mpps ({1e3/mp:.0f} ns/packet), guest {mg:.4f} Mpps "
      f"({1e3/mg:.0f} ns/packet, TCG-emulated unless the log says KVM), "
      f"guest/process {mg/mp:.3f}; per-round ratios {[round(y/x, 3) for x, y in zip(p, g)]}")
if b:
    print(f"boot-to-attach: median {statistics.median(b):.2f} s over {len(b)} boots ({', '.join(f'{x:.2f}' for x in b)})")
EOF
