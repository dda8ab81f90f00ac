/*
 * netvm's C shim over DPDK's `static inline` functions.
 *
 * bindgen can only bind symbols that a DPDK library exports; the fast-path functions
 * (burst rx/tx, mbuf alloc/free, the per-lcore variables) are `static inline` in DPDK's
 * headers, so each gets a one-line exported wrapper here, compiled by build.rs with
 * DPDK's own cflags (`pkg-config --cflags libdpdk`: -march, -include rte_config.h).
 * Every wrapper is named `netvm_` + the DPDK name and does nothing but forward.
 */
#ifndef NETVM_DPDK_SHIM_H
#define NETVM_DPDK_SHIM_H

#include <stdint.h>

#include <rte_bus_vdev.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_malloc.h>
#include <rte_mbuf.h>
#include <rte_memory.h>
#include <rte_mempool.h>

uint16_t netvm_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                                struct rte_mbuf **rx_pkts, uint16_t nb_pkts);
uint16_t netvm_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                                struct rte_mbuf **tx_pkts, uint16_t nb_pkts);

struct rte_mbuf *netvm_rte_pktmbuf_alloc(struct rte_mempool *mp);
int netvm_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs,
                                 unsigned int count);
void netvm_rte_pktmbuf_free(struct rte_mbuf *m);
void netvm_rte_pktmbuf_reset(struct rte_mbuf *m);

/* rte_pktmbuf_mtod(m, void *): the first byte of the first segment's data. */
void *netvm_rte_pktmbuf_mtod(struct rte_mbuf *m);
uint16_t netvm_rte_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t netvm_rte_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t netvm_rte_pktmbuf_nb_segs(const struct rte_mbuf *m);
/* Sets data_len and pkt_len of a single-segment mbuf; no bounds check (see tailroom). */
void netvm_rte_pktmbuf_set_len(struct rte_mbuf *m, uint16_t len);
char *netvm_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
uint16_t netvm_rte_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t netvm_rte_pktmbuf_tailroom(const struct rte_mbuf *m);
uint16_t netvm_rte_pktmbuf_data_room_size(struct rte_mempool *mp);
/* The IO address of the first data byte (what a NIC would DMA to). */
uint64_t netvm_rte_pktmbuf_iova(const struct rte_mbuf *m);
uint16_t netvm_rte_pktmbuf_data_off(const struct rte_mbuf *m);

/*
 * Zero-copy helpers for mbufs whose data lives in memory netvm owns (see the runtime's
 * dpdk port): where the buffer is, which pool the mbuf came from, and two writers.
 */
void *netvm_rte_mbuf_buf_addr(const struct rte_mbuf *m);
struct rte_mempool *netvm_rte_mbuf_pool(const struct rte_mbuf *m);
/* Re-points a pinned external-buffer mbuf at another buffer of the same length. */
void netvm_rte_mbuf_set_buf(struct rte_mbuf *m, void *buf_addr, uint64_t buf_iova);
/* Bytes of private area an mbuf needs to carry its own rte_mbuf_ext_shared_info. */
uint16_t netvm_rte_mbuf_ext_shinfo_priv_bytes(void);
/*
 * Attaches the external buffer [buf_addr, buf_addr + buf_len) to a direct mbuf from a
 * pool created with netvm_rte_mbuf_ext_shinfo_priv_bytes() of private area, keeping the
 * shared info there; free_cb(buf_addr, opaque) runs when the last mbuf lets it go. The
 * packet is data_len bytes at data_off.
 */
void netvm_rte_pktmbuf_attach_extbuf(struct rte_mbuf *m, void *buf_addr, uint64_t buf_iova,
                                     uint16_t buf_len, uint16_t data_off, uint16_t data_len,
                                     rte_mbuf_extbuf_free_callback_t free_cb, void *opaque);
/* References to the external buffer of m (1 for a buffer only m points at). */
uint16_t netvm_rte_mbuf_ext_refcnt(const struct rte_mbuf *m);
/* Whether m carries an external buffer (RTE_MBUF_F_EXTERNAL). */
int netvm_rte_mbuf_has_extbuf(const struct rte_mbuf *m);

/*
 * Returns every lcore's cache of mp to the pool's ring, so that one thread can take back
 * every free object (rte_mempool_avail_count counts the caches; a get reaches only its
 * own). No thread may use mp meanwhile.
 */
void netvm_rte_mempool_flush_caches(struct rte_mempool *mp);

/*
 * The offsets of the rte_mbuf fields the Rust side reads and writes inline, as this
 * compiler laid them out, in the order of enum netvm_mbuf_field; and sizeof(struct
 * rte_mbuf) last. dpdk-sys compares them with bindgen's layout before the EAL starts, so a
 * DPDK whose mbuf differs from the headers the bindings came from is refused, not misread.
 */
enum netvm_mbuf_field {
  NETVM_MBUF_BUF_ADDR,
  NETVM_MBUF_BUF_IOVA,
  NETVM_MBUF_DATA_OFF,
  NETVM_MBUF_REFCNT,
  NETVM_MBUF_NB_SEGS,
  NETVM_MBUF_PORT,
  NETVM_MBUF_OL_FLAGS,
  NETVM_MBUF_PACKET_TYPE,
  NETVM_MBUF_PKT_LEN,
  NETVM_MBUF_DATA_LEN,
  NETVM_MBUF_VLAN_TCI,
  NETVM_MBUF_VLAN_TCI_OUTER,
  NETVM_MBUF_BUF_LEN,
  NETVM_MBUF_POOL,
  NETVM_MBUF_NEXT,
  NETVM_MBUF_TX_OFFLOAD,
  NETVM_MBUF_SHINFO,
  NETVM_MBUF_SIZE,
  NETVM_MBUF_FIELDS
};
/* Writes min(n, NETVM_MBUF_FIELDS) values to out; returns NETVM_MBUF_FIELDS. */
unsigned int netvm_rte_mbuf_layout(uint64_t *out, unsigned int n);
/* RTE_MBUF_F_EXTERNAL, the flag rte_pktmbuf_reset keeps. */
uint64_t netvm_rte_mbuf_f_external(void);

unsigned int netvm_rte_lcore_id(void);
/* Function-like macros bindgen cannot evaluate. */
/* RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP: the hash types netvm spreads flows by. */
uint64_t netvm_rte_eth_rss_ip_tcp_udp(void);
uint64_t netvm_rte_bad_iova(void);
/* rte_errno is a per-lcore (thread-local) variable behind a macro. */
int netvm_rte_errno(void);

#endif
