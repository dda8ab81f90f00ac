// The Hyperscan side of benches/dpi.sh: scans the TCP payloads of a pcap written by
// benches/dpi/gen.py with every pattern of its `patterns` file in one block-mode database
// (HS_FLAG_SINGLEMATCH, literals through hs_compile_lit_multi, regexes through
// hs_compile_multi with HS_FLAG_CASELESS for `/i`), on one core, the way `netvm bench`
// times the JIT: the payloads are in memory, scanned in order, cycling, for RUNS runs of at
// least RUN_MS each; prints the median Mpps, the packets with a match, the database size and
// the compile time.
//
//   cc -O2 -o hs_bench hs_bench.c $(pkg-config --cflags --libs libhs)
//   hs_bench PATTERNS PCAP [RUNS] [RUN_MS]
#include <hs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAYLOAD_AT 54 // Ethernet (14) + IPv4 without options (20) + TCP without options (20)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int on_match(unsigned id, unsigned long long from, unsigned long long to, unsigned flags,
                    void *ctx) {
    (void)id, (void)from, (void)to, (void)flags;
    *(int *)ctx = 1;
    return 0; // keep scanning: a classifier needs every pattern's answer, as netvm's does
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void die(const char *what) {
    fprintf(stderr, "hs_bench: %s\n", what);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 3) die("usage: hs_bench PATTERNS PCAP [RUNS] [RUN_MS]");
    int runs = argc > 3 ? atoi(argv[3]) : 5;
    double run_s = (argc > 4 ? atoi(argv[4]) : 200) / 1e3;

    // Patterns: `L HEX` (a literal) or `R FLAGS REGEX` (FLAGS `-` or `i`).
    FILE *pf = fopen(argv[1], "r");
    if (!pf) die("cannot open the patterns file");
    size_t cap = 1024, n = 0;
    char **exprs = malloc(cap * sizeof *exprs);
    size_t *lens = malloc(cap * sizeof *lens);
    unsigned *flags = malloc(cap * sizeof *flags), *ids = malloc(cap * sizeof *ids);
    int literal = 0;
    char line[65536];
    while (fgets(line, sizeof line, pf)) {
        size_t l = strcspn(line, "\n");
        line[l] = 0;
        if (l < 3) continue;
        if (n == cap) {
            cap *= 2;
            exprs = realloc(exprs, cap * sizeof *exprs);
            lens = realloc(lens, cap * sizeof *lens);
            flags = realloc(flags, cap * sizeof *flags);
            ids = realloc(ids, cap * sizeof *ids);
        }
        ids[n] = (unsigned)n;
        flags[n] = HS_FLAG_SINGLEMATCH;
        if (line[0] == 'L') {
            literal = 1;
            size_t hex = strlen(line + 2) / 2;
            char *b = malloc(hex + 1);
            for (size_t i = 0; i < hex; i++) sscanf(line + 2 + 2 * i, "%2hhx", (unsigned char *)&b[i]);
            exprs[n] = b;
            lens[n] = hex;
        } else {
            if (line[2] == 'i') flags[n] |= HS_FLAG_CASELESS;
            exprs[n] = strdup(line + 4);
            lens[n] = strlen(exprs[n]);
        }
        n++;
    }
    fclose(pf);

    hs_database_t *db = NULL;
    hs_compile_error_t *err = NULL;
    double t0 = now();
    hs_error_t rc = literal ? hs_compile_lit_multi((const char *const *)exprs, flags, ids, lens,
                                                   (unsigned)n, HS_MODE_BLOCK, NULL, &db, &err)
                            : hs_compile_multi((const char *const *)exprs, flags, ids, (unsigned)n,
                                               HS_MODE_BLOCK, NULL, &db, &err);
    double compile_ms = (now() - t0) * 1e3;
    if (rc != HS_SUCCESS) {
        fprintf(stderr, "hs_bench: compile failed: %s (pattern %d)\n", err ? err->message : "?",
                err ? err->expression : -1);
        return 1;
    }
    size_t db_size = 0;
    hs_database_size(db, &db_size);
    hs_scratch_t *scratch = NULL;
    if (hs_alloc_scratch(db, &scratch) != HS_SUCCESS) die("cannot allocate scratch");

    // The pcap: classic format, little-endian, as gen.py writes it.
    FILE *cf = fopen(argv[2], "rb");
    if (!cf) die("cannot open the pcap");
    fseek(cf, 0, SEEK_END);
    long size = ftell(cf);
    fseek(cf, 0, SEEK_SET);
    unsigned char *buf = malloc(size);
    if (fread(buf, 1, size, cf) != (size_t)size) die("short read");
    fclose(cf);
    size_t pkts = 0, pcap = 1024;
    const char **data = malloc(pcap * sizeof *data);
    unsigned *dlen = malloc(pcap * sizeof *dlen);
    for (long at = 24; at + 16 <= size;) {
        uint32_t caplen;
        memcpy(&caplen, buf + at + 8, 4);
        if (at + 16 + caplen > (unsigned long)size) die("truncated pcap");
        if (caplen > PAYLOAD_AT) {
            if (pkts == pcap) {
                pcap *= 2;
                data = realloc(data, pcap * sizeof *data);
                dlen = realloc(dlen, pcap * sizeof *dlen);
            }
            data[pkts] = (const char *)buf + at + 16 + PAYLOAD_AT;
            dlen[pkts] = caplen - PAYLOAD_AT;
            pkts++;
        }
        at += 16 + caplen;
    }
    if (!pkts) die("no packets with a payload");

    int matched = 0;
    for (size_t i = 0; i < pkts; i++) { // untimed: warms caches, counts matching packets
        int hit = 0;
        hs_scan(db, data[i], dlen[i], 0, scratch, on_match, &hit);
        matched += hit;
    }
    double *rates = malloc(runs * sizeof *rates);
    volatile int sink = 0;
    for (int r = 0; r < runs; r++) {
        double start = now(), el;
        size_t done = 0;
        do {
            for (size_t i = 0; i < pkts; i++) {
                int hit = 0;
                hs_scan(db, data[i], dlen[i], 0, scratch, on_match, &hit);
                sink += hit;
            }
            done += pkts;
        } while ((el = now() - start) < run_s);
        rates[r] = done / el;
    }
    qsort(rates, runs, sizeof *rates, cmp_double);
    printf("hs %.4f Mpps %d matched %zu db_bytes %.1f compile_ms\n", rates[runs / 2] / 1e6,
           matched, db_size, compile_ms);
    return 0;
}
