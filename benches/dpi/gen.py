#!/usr/bin/env python3
"""Generates one DPI benchmark case (benches/dpi.sh): a policy, the same patterns for the
Hyperscan harness, and a pcap of TCP packets whose payloads are HTTP-like text.

    gen.py KIND COUNT PAYLOAD_BYTES MATCH_PERCENT OUTDIR [SEED]

KIND is `mix` (COUNT literal rules and COUNT / 10 regex rules in one policy, one frame: for
compile time), `lit` (COUNT rules `tcp and payload contains "..."`) or `re` (COUNT rules
`tcp and payload matches /.../`, URL-path and SQL-keyword shapes, half of them `/i`).
MATCH_PERCENT of the packets contain one pattern instance (a literal, or a string the regex
matches); the others contain none, which the generator checks (Python's `re` as the
oracle). Writes OUTDIR/policy.nvr, OUTDIR/patterns (one `L HEX` or `R FLAGS PATTERN` per
line, FLAGS `-` or `i`) and OUTDIR/frames.pcap (Ethernet/IPv4/TCP, payload at byte 54).
"""
import random
import re
import struct
import sys

PACKETS = 2000
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def word(rng, lo, hi):
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


def literals(rng, n):
    out, seen = [], set()
    shapes = ["{w}", "/{w}.php", "{w}.exe", "cmd={w}", "x-{w}", "{w}/{v}"]
    while len(out) < n:
        s = rng.choice(shapes).format(w=word(rng, 6, 10), v=word(rng, 3, 6))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def regexes(rng, n):
    """(pattern, caseless, sample) triples: URL paths and SQL keywords."""
    out = []
    for i in range(n):
        a, b = word(rng, 5, 9), word(rng, 4, 8)
        k = i % 6
        if k == 0:
            out.append((rf"GET /{a}/{b}/[0-9]+\.php", False, f"GET /{a}/{b}/42.php"))
        elif k == 1:
            out.append((rf"/{a}/[a-z0-9_-]+/{b}\?id=[0-9]+", False, f"/{a}/x_1/{b}?id=7"))
        elif k == 2:
            out.append((rf"POST /api/v[0-9]/{a}/[a-z]+", False, f"POST /api/v2/{a}/users"))
        elif k == 3:
            out.append((rf"{a}\s+union\s+(all\s+)?select", True, f"{a.upper()} UNION ALL SELECT"))
        elif k == 4:
            out.append((rf"select\s+[a-z_*,]+\s+from\s+{a}", True, f"SELECT id,name FROM {a}"))
        else:
            out.append((rf"{a}\s*=\s*'[^']*'\s*or\s+'?1'?\s*=", True, f"{a}='' OR '1'='1"))
    return out


def text(rng, size):
    """HTTP-like filler text of exactly `size` bytes."""
    head = f"GET /{word(rng, 3, 8)}/{word(rng, 3, 8)}?q={word(rng, 2, 6)} HTTP/1.1\r\nhost: {word(rng, 4, 9)}.example\r\n"
    parts = [head]
    n = len(head)
    while n < size:
        w = word(rng, 2, 9) + rng.choice("  \r\n/=&.,")
        parts.append(w)
        n += len(w)
    return "".join(parts)[:size]


def frame(payload, i):
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    total = 20 + 20 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, i & 0xFFFF, 0, 64, 6, 0,
                     bytes([10, 0, (i >> 8) & 255, i & 255]), bytes([192, 168, 1, 1]))
    tcp = struct.pack("!HHIIBBHHH", 1024 + (i % 60000), 80, i, 0, 0x50, 0x18, 65535, 0, 0)
    return eth + ip + tcp + payload


def main():
    kind, count, size, pct, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    rng = random.Random(int(sys.argv[6]) if len(sys.argv) > 6 else 1)
    if kind == "mix":
        # The reload case: COUNT literals and COUNT / 10 regexes in one policy (no frames
        # matter; compile time is what is measured).
        lits, res = literals(rng, count), regexes(rng, count // 10)
        with open(f"{out}/policy.nvr", "w") as f:
            f.write(f"# benches/dpi.sh: {count} literals and {count // 10} regexes\n")
            f.writelines(f'rule l{i} : tcp and payload contains "{s}" => drop\n' for i, s in enumerate(lits))
            f.writelines(f"rule r{i} : tcp and payload matches /{p.replace('/', chr(92) + '/')}/{'i' if ci else ''} => drop\n"
                         for i, (p, ci, _) in enumerate(res))
            f.write("default => out a\nport a\n")
        with open(f"{out}/frames.pcap", "wb") as f:
            f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
            fr = frame(text(rng, 512).encode(), 0)
            f.write(struct.pack("<IIII", 0, 0, len(fr), len(fr)) + fr)
        print(0)
        return
    if kind == "lit":
        lits = literals(rng, count)
        samples = lits
        by_len = {}
        for s in lits:
            by_len.setdefault(len(s), set()).add(s)

        def hits(p):
            return any(p[i:i + n] in group for n, group in by_len.items() for i in range(len(p) - n + 1))
        rules = [f'rule l{i} : tcp and payload contains "{s}" => drop' for i, s in enumerate(lits)]
        pats = [f"L {s.encode().hex()}" for s in lits]
    else:
        res = regexes(rng, count)
        samples = [s for _, _, s in res]
        compiled = [re.compile(p, re.I if ci else 0) for p, ci, _ in res]

        def hits(p):
            return any(c.search(p) for c in compiled)
        rules = [f"rule r{i} : tcp and payload matches /{p.replace('/', chr(92) + '/')}/{'i' if ci else ''} => drop"
                 for i, (p, ci, _) in enumerate(res)]
        pats = [f"R {'i' if ci else '-'} {p}" for p, ci, _ in res]
    matching = set(rng.sample(range(PACKETS), round(PACKETS * pct / 100)))
    frames = []
    for i in range(PACKETS):
        while True:
            p = text(rng, size)
            if i in matching:
                s = rng.choice(samples)
                at = rng.randint(0, max(0, size - len(s)))
                p = (p[:at] + s + p[at + len(s):])[:max(size, len(s))]
                break
            if not hits(p):
                break
        frames.append(frame(p.encode(), i))
    with open(f"{out}/policy.nvr", "w") as f:
        f.write(f"# benches/dpi.sh: {count} {kind} rules\n")
        f.write("\n".join(rules) + "\ndefault => out a\nport a\n")
    with open(f"{out}/patterns", "w") as f:
        f.write("\n".join(pats) + "\n")
    with open(f"{out}/frames.pcap", "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, fr in enumerate(frames):
            f.write(struct.pack("<IIII", i, 0, len(fr), len(fr)))
            f.write(fr)
    print(len(matching))


if __name__ == "__main__":
    main()
