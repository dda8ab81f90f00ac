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

unsigned int netvm_rte_lcore_id(void);
/* Function-like macros bindgen cannot evaluate. */
/* RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP: the hash types netvm spreads flows by. */
uint64_t netvm_rte_eth_rss_ip_tcp_udp(void);
uint64_t netvm_rte_bad_iova(void);
/* rte_errno is a per-lcore (thread-local) variable behind a macro. */
int netvm_rte_errno(void);

#endif
