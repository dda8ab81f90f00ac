//! `gen:flows=N,size=BYTES,count=N,tcp=P,udp=P,icmp=P,dpi=P`: synthetic traffic at
//! full speed.
//!
//! One template frame per flow is built at open (with `netvm_packet::PacketSpec`, so
//! checksums and lengths are right); receiving copies templates round-robin into
//! buffers. `tcp`/`udp`/`icmp` are the protocol mix in percent (default 70/25/5),
//! `dpi` the percentage of TCP flows whose payload hits a DPI rule (`GET /admin`,
//! `UNION SELECT`), `count` the packets to send (0: until stopped), `size` the frame
//! size in bytes (60..=2048, default 64). Flows run 10.x / 93.184.216.x → 203.0.113.x,
//! TCP to ports 80, 443, 8080, 22; UDP to 53, 123; deterministic per port index.
//!
//! `prefilled=1` takes the generator's own memcpy out of the measurement, as a NIC
//! writing by DMA or an mmap ring would: a buffer is written once, tagged with its
//! template, and when it comes back to the pool untouched (no VM wrote it) and is
//! allocated again it is sent as it is ([`RxBurst::push_prefilled`]). Each packet is
//! still a fresh allocation, classified and accounted for; only the bytes are not
//! rewritten. The flow order then follows buffer recycling rather than round robin (the
//! mix is that of the templates first written), so use it for throughput, not for tests
//! that expect an order.

use netvm_packet::{BaseProto, Field, PacketSpec};

use super::{bad_args, parse_args, Port, PortError, RxBurst};
use crate::layout::BUF_DATA_ROOM;
#[cfg(test)]
use crate::pool::PacketPool;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenConfig {
    pub flows: usize,
    pub size_bytes: usize,
    /// 0: unbounded.
    pub count: u64,
    pub tcp_pct: u32,
    pub udp_pct: u32,
    pub icmp_pct: u32,
    pub dpi_pct: u32,
    /// Send recycled buffers without rewriting them (see the module doc).
    pub prefilled: bool,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            flows: 64,
            size_bytes: 64,
            count: 0,
            tcp_pct: 70,
            udp_pct: 25,
            icmp_pct: 5,
            dpi_pct: 0,
            prefilled: false,
        }
    }
}

impl GenConfig {
    pub fn parse(args: &str) -> Result<GenConfig, PortError> {
        let mut c = GenConfig::default();
        let keys = [
            "flows",
            "size",
            "count",
            "tcp",
            "udp",
            "icmp",
            "dpi",
            "prefilled",
        ];
        for (k, v) in parse_args("gen", args, &keys)? {
            let n: u64 = v
                .parse()
                .map_err(|_| bad_args("gen", format!("{k}={v}: not a number")))?;
            match k {
                "flows" => c.flows = n as usize,
                "size" => c.size_bytes = n as usize,
                "count" => c.count = n,
                "tcp" => c.tcp_pct = n as u32,
                "udp" => c.udp_pct = n as u32,
                "icmp" => c.icmp_pct = n as u32,
                "prefilled" if n <= 1 => c.prefilled = n == 1,
                "prefilled" => return Err(bad_args("gen", "prefilled is 0 or 1")),
                _ => c.dpi_pct = n as u32,
            }
        }
        if !(1..=65536).contains(&c.flows) {
            return Err(bad_args("gen", "flows must be 1..=65536"));
        }
        if !(60..=BUF_DATA_ROOM).contains(&c.size_bytes) {
            return Err(bad_args(
                "gen",
                format!("size must be 60..={BUF_DATA_ROOM} bytes"),
            ));
        }
        if c.tcp_pct + c.udp_pct + c.icmp_pct == 0 || c.dpi_pct > 100 {
            return Err(bad_args(
                "gen",
                "the protocol mix must not be all zero, and dpi is a percentage",
            ));
        }
        Ok(c)
    }
}

/// A cheap deterministic generator (splitmix64) so runs are reproducible.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn template(c: &GenConfig, flow: usize, rng: &mut u64) -> Result<Vec<u8>, PortError> {
    let total = c.tcp_pct + c.udp_pct + c.icmp_pct;
    let pick = (splitmix(rng) % u64::from(total)) as u32;
    let r = splitmix(rng);
    let src: u128 = if r & 1 == 0 {
        0x0a00_0000 | u128::from((r >> 8) as u32 & 0x00ff_ffff)
    } else {
        0x5db8_d800 | u128::from((r >> 8) as u32 & 0xff) // 93.184.216.0/24
    };
    let dst: u128 = 0xcb00_7100 | (flow as u128 & 0xff); // 203.0.113.0/24
    let sport = 1024 + (splitmix(rng) % 60000) as u128;
    let mut spec;
    let mut payload: Vec<u8> = Vec::new();
    if pick < c.tcp_pct {
        spec = PacketSpec::new(BaseProto::Tcp);
        let dport = [80u128, 443, 8080, 22][(r >> 40) as usize % 4];
        spec.set(Field::TcpSport, sport).set(Field::TcpDport, dport);
        spec.set(Field::TcpFlags, if r >> 50 & 1 == 0 { 0x02 } else { 0x10 });
        if (splitmix(rng) % 100) < u64::from(c.dpi_pct) {
            payload = if r >> 52 & 1 == 0 {
                b"GET /admin HTTP/1.1\r\n".to_vec()
            } else {
                b"GET /x?q=1 UNION SELECT 1".to_vec()
            };
        }
    } else if pick < c.tcp_pct + c.udp_pct {
        spec = PacketSpec::new(BaseProto::Udp);
        let dport = [53u128, 123][(r >> 40) as usize % 2];
        spec.set(Field::UdpSport, sport).set(Field::UdpDport, dport);
    } else {
        spec = PacketSpec::new(BaseProto::Icmp);
        spec.set(Field::IcmpType, 8);
    }
    spec.set(Field::IpSrc, src).set(Field::IpDst, dst);
    let build = |spec: &PacketSpec| {
        spec.build()
            .map_err(|e| PortError::Other(format!("gen: building a template: {e}")))
    };
    spec.payload = Some(payload.clone());
    let headers = build(&spec)?.len() - payload.len();
    let want = c.size_bytes.saturating_sub(headers).max(payload.len());
    payload.resize(want, 0);
    spec.payload = Some(payload);
    build(&spec)
}

pub struct GenPort {
    config: GenConfig,
    /// One frame per flow, shared by the shares of a split generator.
    templates: std::sync::Arc<Vec<Vec<u8>>>,
    /// The flows (template indices) this generator sends: all of them, or its share
    /// after [`Port::split`].
    flows: Vec<usize>,
    /// Position in `flows` of the next one to send.
    next_flow: usize,
    /// Packets to send (`config.count`, or this share of it); 0: unbounded.
    quota: u64,
    sent: u64,
    /// `share/of` after a split, for reports.
    share: Option<(usize, usize)>,
}

impl GenPort {
    pub fn new(config: &GenConfig, port_index: usize) -> Result<GenPort, PortError> {
        let mut rng = 0x6e65_7476_6d00 + port_index as u64;
        let templates = (0..config.flows)
            .map(|flow| template(config, flow, &mut rng))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GenPort {
            config: config.clone(),
            flows: (0..templates.len()).collect(),
            templates: std::sync::Arc::new(templates),
            next_flow: 0,
            quota: config.count,
            sent: 0,
            share: None,
        })
    }

    /// Share `k` of `of`: the flows `f` with `f % of == k` (as RSS spreads flows over
    /// queues), and of `count` the packets one generator would send to those flows, so
    /// that the shares together send exactly what one would.
    fn share(&self, k: usize, of: usize) -> GenPort {
        let flows: Vec<usize> = (k..self.templates.len()).step_by(of).collect();
        let (count, total) = (self.config.count, self.templates.len() as u64);
        let per_flow = |f: usize| count / total + u64::from((f as u64) < count % total);
        GenPort {
            config: self.config.clone(),
            templates: self.templates.clone(),
            quota: flows.iter().map(|&f| per_flow(f)).sum(),
            flows,
            next_flow: 0,
            sent: 0,
            share: Some((k, of)),
        }
    }

    /// The frames it will send, one per flow (for tests).
    pub fn templates(&self) -> &[Vec<u8>] {
        &self.templates
    }
}

impl Port for GenPort {
    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "gen:flows={},size={},count={},tcp={},udp={},icmp={},dpi={}{}",
            c.flows,
            c.size_bytes,
            c.count,
            c.tcp_pct,
            c.udp_pct,
            c.icmp_pct,
            c.dpi_pct,
            if c.prefilled { ",prefilled=1" } else { "" }
        ) + &match self.share {
            Some((k, of)) => format!(" (share {} of {of})", k + 1),
            None => String::new(),
        }
    }

    fn rx_burst(&mut self, burst: &mut RxBurst<'_>) {
        while !self.rx_done() {
            let flow = self.flows[self.next_flow];
            let written_next = if self.config.prefilled {
                match burst.push_prefilled(&self.templates, flow) {
                    Some(t) => t == flow,
                    None => break,
                }
            } else if burst.push(&self.templates[flow]) {
                true
            } else {
                break;
            };
            self.sent += 1;
            if written_next {
                self.next_flow += 1;
                if self.next_flow == self.flows.len() {
                    self.next_flow = 0;
                }
            }
        }
    }

    fn rx_done(&self) -> bool {
        // A share with no flow (more threads than flows) sends nothing.
        self.flows.is_empty() || (self.config.count != 0 && self.sent >= self.quota)
    }

    /// Like a multi-queue NIC under RSS: each switch thread gets the flows `f` with
    /// `f % threads == k` and its share of `count`; together they send what one would.
    fn split(&mut self, threads: usize) -> Result<Vec<Box<dyn Port>>, PortError> {
        let shares = (1..threads)
            .map(|k| Box::new(self.share(k, threads)) as Box<dyn Port>)
            .collect();
        *self = self.share(0, threads);
        Ok(shares)
    }

    fn has_tx(&self) -> bool {
        false
    }

    fn tx_burst(&mut self, _frames: &[&[u8]]) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of `buffers` buffers on small pages.
    fn test_pool(buffers: usize) -> PacketPool {
        use crate::layout::RegionConfig;
        use crate::region::{HugepagePolicy, SharedRegion};
        let config = RegionConfig {
            buffer_count: buffers,
            ring_count: 1,
            ring_slots: 16,
            counter_count: 0,
        };
        PacketPool::new(SharedRegion::create(config, HugepagePolicy::Off).unwrap()).unwrap()
    }

    #[test]
    fn templates_have_the_requested_size_and_mix() {
        let c = GenConfig::parse("flows=200,size=128,tcp=50,udp=50,icmp=0,dpi=100").unwrap();
        let gen = GenPort::new(&c, 0).unwrap();
        assert!(gen.templates().iter().all(|t| t.len() == 128));
        let tcp = gen
            .templates()
            .iter()
            .filter(|t| netvm_packet::Decoded::new(t).has(netvm_packet::Proto::Tcp))
            .count();
        assert!((60..140).contains(&tcp), "{tcp} TCP flows of 200");
        assert!(GenConfig::parse("size=10").is_err());
        assert!(GenConfig::parse("prefilled=2").is_err());
        assert!(GenConfig::parse("colour=red").is_err());
    }

    #[test]
    fn a_split_generator_sends_exactly_what_one_would_each_flow_from_one_share() {
        let pool = test_pool(64);
        let mut cache = pool.cache(8).unwrap();
        // Every frame each generator sends, by template.
        let mut drain = |gen: &mut dyn Port| {
            let mut sent = Vec::new();
            while !gen.rx_done() {
                let mut out = [0u32; 16];
                let n = {
                    let mut b = RxBurst::new(&mut cache, &mut out, 0);
                    gen.rx_burst(&mut b);
                    b.len()
                };
                assert!(n > 0, "a generator that is not done sends");
                // SAFETY (test): we hold every buffer of the burst.
                sent.extend(
                    out[..n]
                        .iter()
                        .map(|&i| unsafe { pool.buf_data(i) }.unwrap().to_vec()),
                );
                cache.free_burst(&out[..n]).unwrap();
            }
            sent
        };
        let c = GenConfig::parse("flows=7,count=100,size=64").unwrap();
        let mut whole = GenPort::new(&c, 0).unwrap();
        let mut expected = drain(&mut whole);
        let mut first = GenPort::new(&c, 0).unwrap();
        let mut shares = first.split(3).unwrap();
        assert_eq!(shares.len(), 2);
        assert!(first.describe().ends_with("(share 1 of 3)"));
        let mut by_share = vec![drain(&mut first)];
        for share in shares.iter_mut() {
            by_share.push(drain(share.as_mut()));
        }
        // No flow is sent by two shares (RSS keeps a flow on one queue).
        for (k, sent) in by_share.iter().enumerate() {
            for other in &by_share[k + 1..] {
                assert!(sent.iter().all(|f| !other.contains(f)));
            }
        }
        let mut together: Vec<Vec<u8>> = by_share.concat();
        assert_eq!(together.len(), 100);
        together.sort();
        expected.sort();
        assert_eq!(together, expected);
        // More threads than flows: the extra shares send nothing and are done.
        let mut few = GenPort::new(&GenConfig::parse("flows=2").unwrap(), 0).unwrap();
        let extra = few.split(3).unwrap();
        assert!(extra[1].rx_done() && !extra[0].rx_done());
    }

    #[test]
    fn prefilled_buffers_are_resent_unwritten_until_someone_writes_them() {
        let pool = test_pool(8);
        let mut cache = pool.cache(4).unwrap();
        let c = GenConfig::parse("flows=4,size=300,prefilled=1").unwrap();
        let mut gen = GenPort::new(&c, 2).unwrap();
        let burst = |gen: &mut GenPort, cache: &mut crate::pool::PoolCache| {
            let mut out = [0u32; 8];
            let n = {
                let mut b = RxBurst::new(cache, &mut out, 2);
                gen.rx_burst(&mut b);
                b.len()
            };
            out[..n].to_vec()
        };
        let first = burst(&mut gen, &mut cache);
        assert_eq!(first.len(), 8);
        let frame = |i: u32| unsafe { pool.buf_data(i) }.unwrap().to_vec();
        let sent: Vec<Vec<u8>> = first.iter().map(|&i| frame(i)).collect();
        for (k, f) in sent.iter().enumerate() {
            assert_eq!(f, &gen.templates()[k % 4]);
        }
        // A VM wrote buffer 0 (and said so): its bytes are unknown and get rewritten.
        // Buffer 1 is scribbled on behind the pool's back: being resent with the
        // scribble proves the generator did not rewrite it.
        // SAFETY (test): we hold every buffer of the burst.
        unsafe { pool.buf_data_mut(first[0]).unwrap()[0] ^= 0xff };
        pool.forget_content(first[0]).unwrap();
        unsafe { pool.buf_data_mut(first[1]).unwrap()[0] ^= 0xff };
        cache.free_burst(&first).unwrap();
        let second = burst(&mut gen, &mut cache);
        assert_eq!(second.len(), 8, "the same 8 buffers, all of the pool");
        assert_ne!(frame(first[1]), gen.templates()[1]);
        for &i in &second {
            assert_eq!(pool.port(i).unwrap(), 2);
            if i != first[1] {
                assert!(gen.templates().contains(&frame(i)));
            }
        }
        cache.free_burst(&second).unwrap();
    }
}
