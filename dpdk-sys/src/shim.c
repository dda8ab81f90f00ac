/* See shim.h: exported wrappers over DPDK's static inline functions. */
#include "shim.h"

#include <stddef.h>

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

uint16_t netvm_rte_pktmbuf_data_off(const struct rte_mbuf *m) { return m->data_off; }

void *netvm_rte_mbuf_buf_addr(const struct rte_mbuf *m) { return m->buf_addr; }

struct rte_mempool *netvm_rte_mbuf_pool(const struct rte_mbuf *m) { return m->pool; }

void netvm_rte_mbuf_set_buf(struct rte_mbuf *m, void *buf_addr, uint64_t buf_iova) {
  m->buf_addr = buf_addr;
  rte_mbuf_iova_set(m, buf_iova);
}

uint16_t netvm_rte_mbuf_ext_shinfo_priv_bytes(void) {
  return RTE_ALIGN_CEIL(sizeof(struct rte_mbuf_ext_shared_info), RTE_MBUF_PRIV_ALIGN);
}

void netvm_rte_pktmbuf_attach_extbuf(struct rte_mbuf *m, void *buf_addr, uint64_t buf_iova,
                                     uint16_t buf_len, uint16_t data_off, uint16_t data_len,
                                     rte_mbuf_extbuf_free_callback_t free_cb, void *opaque) {
  struct rte_mbuf_ext_shared_info *shinfo = rte_mbuf_to_priv(m);
  shinfo->free_cb = free_cb;
  shinfo->fcb_opaque = opaque;
  rte_mbuf_ext_refcnt_set(shinfo, 1);
  rte_pktmbuf_attach_extbuf(m, buf_addr, buf_iova, buf_len, shinfo);
  m->data_off = data_off;
  m->data_len = data_len;
  m->pkt_len = data_len;
}

uint16_t netvm_rte_mbuf_ext_refcnt(const struct rte_mbuf *m) {
  return rte_mbuf_ext_refcnt_read(m->shinfo);
}

int netvm_rte_mbuf_has_extbuf(const struct rte_mbuf *m) { return RTE_MBUF_HAS_EXTBUF(m) ? 1 : 0; }

void netvm_rte_mempool_flush_caches(struct rte_mempool *mp) {
  if (mp->cache_size == 0)
    return;
  for (unsigned int lcore = 0; lcore < RTE_MAX_LCORE; lcore++)
    rte_mempool_cache_flush(&mp->local_cache[lcore], mp);
}

unsigned int netvm_rte_mbuf_layout(uint64_t *out, unsigned int n) {
  const uint64_t layout[NETVM_MBUF_FIELDS] = {
      [NETVM_MBUF_BUF_ADDR] = offsetof(struct rte_mbuf, buf_addr),
      [NETVM_MBUF_BUF_IOVA] = offsetof(struct rte_mbuf, buf_iova),
      [NETVM_MBUF_DATA_OFF] = offsetof(struct rte_mbuf, data_off),
      [NETVM_MBUF_REFCNT] = offsetof(struct rte_mbuf, refcnt),
      [NETVM_MBUF_NB_SEGS] = offsetof(struct rte_mbuf, nb_segs),
      [NETVM_MBUF_PORT] = offsetof(struct rte_mbuf, port),
      [NETVM_MBUF_OL_FLAGS] = offsetof(struct rte_mbuf, ol_flags),
      [NETVM_MBUF_PACKET_TYPE] = offsetof(struct rte_mbuf, packet_type),
      [NETVM_MBUF_PKT_LEN] = offsetof(struct rte_mbuf, pkt_len),
      [NETVM_MBUF_DATA_LEN] = offsetof(struct rte_mbuf, data_len),
      [NETVM_MBUF_VLAN_TCI] = offsetof(struct rte_mbuf, vlan_tci),
      [NETVM_MBUF_VLAN_TCI_OUTER] = offsetof(struct rte_mbuf, vlan_tci_outer),
      [NETVM_MBUF_BUF_LEN] = offsetof(struct rte_mbuf, buf_len),
      [NETVM_MBUF_POOL] = offsetof(struct rte_mbuf, pool),
      [NETVM_MBUF_NEXT] = offsetof(struct rte_mbuf, next),
      [NETVM_MBUF_TX_OFFLOAD] = offsetof(struct rte_mbuf, tx_offload),
      [NETVM_MBUF_SHINFO] = offsetof(struct rte_mbuf, shinfo),
      [NETVM_MBUF_SIZE] = sizeof(struct rte_mbuf),
  };
  for (unsigned int i = 0; i < n && i < NETVM_MBUF_FIELDS; i++)
    out[i] = layout[i];
  return NETVM_MBUF_FIELDS;
}

uint64_t netvm_rte_mbuf_f_external(void) { return RTE_MBUF_F_EXTERNAL; }
