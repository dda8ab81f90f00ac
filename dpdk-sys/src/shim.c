/* See shim.h: exported wrappers over DPDK's static inline functions. */
#include "shim.h"

uint16_t netvm_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                                struct rte_mbuf **rx_pkts, uint16_t nb_pkts) {
  return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t netvm_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                                struct rte_mbuf **tx_pkts, uint16_t nb_pkts) {
  return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *netvm_rte_pktmbuf_alloc(struct rte_mempool *mp) {
  return rte_pktmbuf_alloc(mp);
}

int netvm_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs,
                                 unsigned int count) {
  return rte_pktmbuf_alloc_bulk(mp, mbufs, count);
}

void netvm_rte_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

void netvm_rte_pktmbuf_reset(struct rte_mbuf *m) { rte_pktmbuf_reset(m); }

void *netvm_rte_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }

uint16_t netvm_rte_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }

uint32_t netvm_rte_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }

uint16_t netvm_rte_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }

void netvm_rte_pktmbuf_set_len(struct rte_mbuf *m, uint16_t len) {
  m->data_len = len;
  m->pkt_len = len;
}

char *netvm_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len) {
  return rte_pktmbuf_append(m, len);
}

uint16_t netvm_rte_pktmbuf_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }

uint16_t netvm_rte_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }

uint16_t netvm_rte_pktmbuf_data_room_size(struct rte_mempool *mp) {
  return rte_pktmbuf_data_room_size(mp);
}

uint64_t netvm_rte_pktmbuf_iova(const struct rte_mbuf *m) { return rte_pktmbuf_iova(m); }

unsigned int netvm_rte_lcore_id(void) { return rte_lcore_id(); }

int netvm_rte_errno(void) { return rte_errno; }

uint64_t netvm_rte_eth_rss_ip_tcp_udp(void) {
  return RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP;
}

uint64_t netvm_rte_bad_iova(void) { return RTE_BAD_IOVA; }
