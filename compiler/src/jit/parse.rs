//! Emitted header parsing: the absent-header rules of [`netvm_packet::Decoded`], as Cranelift
//! code, down to the deepest layer the policy reads and no further.
//!
//! The parse computes, in SSA variables: whether Ethernet is present, the outer VLAN tag's
//! offset, `eth.type`, the L3 offset, which of ARP/IPv4/IPv6 is present, the upper protocol
//! (after the IPv6 extension-header walk), which L4 header is present and where, and the
//! payload bounds. Each step mirrors a line of `Decoded::new`; a comment names the rule where
//! the code is not obviously the same.
//!
//! **Bounds.** Every load here is preceded, on every path to it, by a comparison that proves
//! `offset + width <= len`. Field loads ([`Parse::field_load`]) are emitted only in blocks
//! dominated by the field's presence test ([`Parse::field_present`]), and presence implies the
//! bytes are captured: `eth` ⇒ 14 bytes, a VLAN tag ⇒ its 4 bytes, `ip` ⇒ the whole IPv4
//! header, `ip6` ⇒ 40 bytes, `tcp` ⇒ its data-offset length (≥ 20), `udp`/`icmp`/`icmp6` ⇒ 8.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use netvm_packet::{Field, FieldHeader, Proto};

use crate::ir::Atom;

/// How deep the parse must go for a policy (each level includes the ones before).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Frame length only (`pkt.len`, `eth`, `eth.src`/`eth.dst`, `in_port`).
    Eth,
    /// VLAN tags and `eth.type`.
    Tags,
    /// ARP, IPv4, IPv6 headers.
    L3,
    /// The IPv6 extension walk and the L4 header.
    L4,
    /// Payload bounds.
    Payload,
}

impl Level {
    pub fn of_field(field: Field) -> Level {
        match field.header() {
            FieldHeader::Frame => Level::Eth,
            FieldHeader::Payload => Level::Payload,
            FieldHeader::TcpOrUdp => Level::L4,
            FieldHeader::Proto(p) => match field {
                Field::EthType => Level::Tags,
                _ => Level::of_proto(p),
            },
        }
    }

    pub fn of_proto(p: Proto) -> Level {
        match p {
            Proto::Eth => Level::Eth,
            Proto::Vlan => Level::Tags,
            Proto::Arp | Proto::Ip | Proto::Ip6 => Level::L3,
            Proto::Tcp | Proto::Udp | Proto::Icmp | Proto::Icmp6 => Level::L4,
        }
    }

    pub fn of_atom(atom: &Atom) -> Level {
        match atom {
            Atom::Proto(p) => Level::of_proto(*p),
            Atom::Field { field, .. } => Level::of_field(*field),
            Atom::InPort { .. } => Level::Eth,
            Atom::PayloadByte { .. }
            | Atom::Contains(_)
            | Atom::StartsWith(_)
            | Atom::Matches(_) => Level::Payload,
        }
    }
}

/// L4 header kinds as the `l4_kind` variable holds them.
const TCP: i64 = 1;
const UDP: i64 = 2;
const ICMP: i64 = 3;
const ICMP6: i64 = 4;

/// Loads of frame bytes: unaligned, never trapping (bounds are proven before), read-only.
fn frame_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap().with_readonly()
}

/// The parse results, as variables readable anywhere after [`Parse::emit`].
pub struct Parse {
    pub ptr: Value,
    pub len: Value,
    eth: Variable,
    vlan: Variable,
    ety_ok: Variable,
    ety: Variable,
    l3: Variable,
    arp: Variable,
    ip: Variable,
    ip6: Variable,
    l4_kind: Variable,
    l4: Variable,
    pay_start: Variable,
    pay_end: Variable,
}

/// `if cond { body }`, leaving the builder in the join block.
pub fn if_then(fb: &mut FunctionBuilder, cond: Value, body: impl FnOnce(&mut FunctionBuilder)) {
    let then = fb.create_block();
    let join = fb.create_block();
    fb.ins().brif(cond, then, &[], join, &[]);
    fb.switch_to_block(then);
    body(fb);
    fb.ins().jump(join, &[]);
    fb.switch_to_block(join);
}

fn var(fb: &mut FunctionBuilder, ty: types::Type, init: i64) -> Variable {
    let v = fb.declare_var(ty);
    let c = fb.ins().iconst(ty, init);
    fb.def_var(v, c);
    v
}

fn set(fb: &mut FunctionBuilder, v: Variable, ty: types::Type, value: i64) {
    let c = fb.ins().iconst(ty, value);
    fb.def_var(v, c);
}

impl Parse {
    /// A byte at `off + extra`, zero-extended to i64. The caller has proven it in bounds.
    pub fn u8(&self, fb: &mut FunctionBuilder, off: Value, extra: i32) -> Value {
        let addr = fb.ins().iadd(self.ptr, off);
        let v = fb.ins().load(types::I8, frame_flags(), addr, extra);
        fb.ins().uextend(types::I64, v)
    }

    /// A big-endian u16 at `off + extra`, as i64. The caller has proven it in bounds.
    pub fn be16(&self, fb: &mut FunctionBuilder, off: Value, extra: i32) -> Value {
        let addr = fb.ins().iadd(self.ptr, off);
        let v = fb.ins().load(types::I16, frame_flags(), addr, extra);
        let v = fb.ins().bswap(v);
        fb.ins().uextend(types::I64, v)
    }

    /// A big-endian u32 at `off + extra`, as i64. The caller has proven it in bounds.
    pub fn be32(&self, fb: &mut FunctionBuilder, off: Value, extra: i32) -> Value {
        let addr = fb.ins().iadd(self.ptr, off);
        let v = fb.ins().load(types::I32, frame_flags(), addr, extra);
        let v = fb.ins().bswap(v);
        fb.ins().uextend(types::I64, v)
    }

    fn be48(&self, fb: &mut FunctionBuilder, off: Value, extra: i32) -> Value {
        let hi = self.be16(fb, off, extra);
        let lo = self.be32(fb, off, extra + 2);
        let hi = fb.ins().ishl_imm_u(hi, 32);
        fb.ins().bor(hi, lo)
    }

    fn be128(&self, fb: &mut FunctionBuilder, off: Value, extra: i32) -> Value {
        let addr = fb.ins().iadd(self.ptr, off);
        let hi = fb.ins().load(types::I64, frame_flags(), addr, extra);
        let lo = fb.ins().load(types::I64, frame_flags(), addr, extra + 8);
        let hi = fb.ins().bswap(hi);
        let lo = fb.ins().bswap(lo);
        fb.ins().iconcat(lo, hi)
    }

    /// `len >= off + need`, as a flag.
    fn fits(&self, fb: &mut FunctionBuilder, off: Value, need: i64) -> Value {
        let end = fb.ins().iadd_imm_u(off, need);
        fb.ins()
            .icmp(IntCC::UnsignedGreaterThanOrEqual, self.len, end)
    }

    /// Emits the parse down to `level`. `ptr`/`len` are the frame (len as i64).
    pub fn emit(fb: &mut FunctionBuilder, ptr: Value, len: Value, level: Level) -> Parse {
        let i8t = types::I8;
        let i64t = types::I64;
        let eth = fb.declare_var(i8t);
        let e = fb
            .ins()
            .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, len, 14);
        fb.def_var(eth, e);
        let p = Parse {
            ptr,
            len,
            eth,
            vlan: var(fb, i64t, 0),
            ety_ok: var(fb, i8t, 0),
            ety: var(fb, i64t, 0),
            l3: var(fb, i64t, 14),
            arp: var(fb, i8t, 0),
            ip: var(fb, i8t, 0),
            ip6: var(fb, i8t, 0),
            l4_kind: var(fb, i64t, 0),
            l4: var(fb, i64t, 0),
            pay_start: var(fb, i64t, 0),
            pay_end: var(fb, i64t, 0),
        };
        if level >= Level::Tags {
            if_then(fb, e, |fb| p.emit_eth(fb, level));
        }
        p
    }

    fn is_tag(fb: &mut FunctionBuilder, ty: Value) -> Value {
        let a = fb.ins().icmp_imm_u(IntCC::Equal, ty, 0x8100);
        let b = fb.ins().icmp_imm_u(IntCC::Equal, ty, 0x88a8);
        fb.ins().bor(a, b)
    }

    /// Inside `eth`: tags, `eth.type`, then the deeper levels.
    fn emit_eth(&self, fb: &mut FunctionBuilder, level: Level) {
        let i8t = types::I8;
        let i64t = types::I64;
        let zero = fb.ins().iconst(i64t, 0);
        let at = var(fb, i64t, 12);
        let ty = self.be16(fb, zero, 12);
        fb.def_var(self.ety, ty);
        set(fb, self.ety_ok, i8t, 1);
        // Up to two tags; a cut-off tag makes `eth.type` absent.
        let tag = Self::is_tag(fb, ty);
        if_then(fb, tag, |fb| {
            let short = fb.ins().icmp_imm_u(IntCC::UnsignedLessThan, self.len, 18);
            let cut = fb.create_block();
            let whole = fb.create_block();
            let join = fb.create_block();
            fb.ins().brif(short, cut, &[], whole, &[]);
            fb.switch_to_block(cut);
            set(fb, self.ety_ok, i8t, 0);
            fb.ins().jump(join, &[]);
            fb.switch_to_block(whole);
            set(fb, self.vlan, i64t, 14);
            set(fb, at, i64t, 16);
            let ty2 = self.be16(fb, zero, 16);
            fb.def_var(self.ety, ty2);
            let tag2 = Self::is_tag(fb, ty2);
            if_then(fb, tag2, |fb| {
                let short = fb.ins().icmp_imm_u(IntCC::UnsignedLessThan, self.len, 22);
                let cut = fb.create_block();
                let whole = fb.create_block();
                fb.ins().brif(short, cut, &[], whole, &[]);
                fb.switch_to_block(cut);
                set(fb, self.ety_ok, i8t, 0);
                fb.ins().jump(join, &[]);
                fb.switch_to_block(whole);
                set(fb, at, i64t, 20);
                let ty3 = self.be16(fb, zero, 20);
                fb.def_var(self.ety, ty3);
            });
            fb.ins().jump(join, &[]);
            fb.switch_to_block(join);
        });
        let at = fb.use_var(at);
        let l3 = fb.ins().iadd_imm_u(at, 2);
        fb.def_var(self.l3, l3);
        if level >= Level::L3 {
            self.emit_l3(fb, level);
        }
    }

    fn ety_is(&self, fb: &mut FunctionBuilder, ty: i64) -> Value {
        let ok = fb.use_var(self.ety_ok);
        let ety = fb.use_var(self.ety);
        let is = fb.ins().icmp_imm_u(IntCC::Equal, ety, ty);
        fb.ins().band(ok, is)
    }

    fn emit_l3(&self, fb: &mut FunctionBuilder, level: Level) {
        let i8t = types::I8;
        let i64t = types::I64;
        let l3 = fb.use_var(self.l3);
        let after_l3 = var(fb, i64t, 0);
        fb.def_var(after_l3, l3);
        let end = var(fb, i64t, 0);
        fb.def_var(end, self.len);
        let upper_ok = var(fb, i8t, 0);
        let upper = var(fb, i64t, 0);

        // ARP: type 0x0806 and 28 bytes.
        let is_arp = self.ety_is(fb, 0x0806);
        let fits = self.fits(fb, l3, 28);
        let arp = fb.ins().band(is_arp, fits);
        fb.def_var(self.arp, arp);

        // IPv4: version 4, IHL >= 5, the whole header captured.
        let is_ip = self.ety_is(fb, 0x0800);
        let fits = self.fits(fb, l3, 20);
        let cond = fb.ins().band(is_ip, fits);
        if_then(fb, cond, |fb| {
            let b0 = self.u8(fb, l3, 0);
            let version = fb.ins().ushr_imm_u(b0, 4);
            let v4 = fb.ins().icmp_imm_u(IntCC::Equal, version, 4);
            let ihl_words = fb.ins().band_imm_u(b0, 0xf);
            let ihl_ok = fb
                .ins()
                .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, ihl_words, 5);
            let ihl = fb.ins().ishl_imm_u(ihl_words, 2);
            let hdr_end = fb.ins().iadd(l3, ihl);
            let hdr_fits = fb
                .ins()
                .icmp(IntCC::UnsignedGreaterThanOrEqual, self.len, hdr_end);
            let ok = fb.ins().band(v4, ihl_ok);
            let ok = fb.ins().band(ok, hdr_fits);
            if_then(fb, ok, |fb| {
                set(fb, self.ip, i8t, 1);
                if level >= Level::L4 {
                    fb.def_var(after_l3, hdr_end);
                    // The payload ends at the total length when that is sane.
                    let total = self.be16(fb, l3, 2);
                    let sane_lo = fb.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, total, ihl);
                    let total_end = fb.ins().iadd(l3, total);
                    let sane_hi =
                        fb.ins()
                            .icmp(IntCC::UnsignedLessThanOrEqual, total_end, self.len);
                    let sane = fb.ins().band(sane_lo, sane_hi);
                    let e = fb.ins().select(sane, total_end, self.len);
                    fb.def_var(end, e);
                    // L4 only in the first fragment.
                    let frag = self.be16(fb, l3, 6);
                    let off = fb.ins().band_imm_u(frag, 0x1fff);
                    let first = fb.ins().icmp_imm_u(IntCC::Equal, off, 0);
                    fb.def_var(upper_ok, first);
                    let proto = self.u8(fb, l3, 9);
                    fb.def_var(upper, proto);
                }
            });
        });

        // IPv6: version 6 and 40 bytes, then the extension-header walk.
        let is_ip6 = self.ety_is(fb, 0x86dd);
        let fits = self.fits(fb, l3, 40);
        let cond = fb.ins().band(is_ip6, fits);
        if_then(fb, cond, |fb| {
            let b0 = self.u8(fb, l3, 0);
            let version = fb.ins().ushr_imm_u(b0, 4);
            let v6 = fb.ins().icmp_imm_u(IntCC::Equal, version, 6);
            if_then(fb, v6, |fb| {
                set(fb, self.ip6, i8t, 1);
                if level >= Level::L4 {
                    self.emit_ext_walk(fb, l3, end, after_l3, upper_ok, upper);
                }
            });
        });

        if level >= Level::L4 {
            self.emit_l4(fb, level, after_l3, end, upper_ok, upper);
        }
    }

    fn emit_ext_walk(
        &self,
        fb: &mut FunctionBuilder,
        l3: Value,
        end: Variable,
        after_l3: Variable,
        upper_ok: Variable,
        upper: Variable,
    ) {
        let i8t = types::I8;
        let i64t = types::I64;
        let plen = self.be16(fb, l3, 4);
        let plen_end = fb.ins().iadd(l3, plen);
        let plen_end = fb.ins().iadd_imm_u(plen_end, 40);
        let sane = fb
            .ins()
            .icmp(IntCC::UnsignedLessThanOrEqual, plen_end, self.len);
        let e = fb.ins().select(sane, plen_end, self.len);
        fb.def_var(end, e);
        let nh = var(fb, i64t, 0);
        let first_nh = self.u8(fb, l3, 6);
        fb.def_var(nh, first_nh);
        let p = var(fb, i64t, 0);
        let p0 = fb.ins().iadd_imm_u(l3, 40);
        fb.def_var(p, p0);
        set(fb, upper_ok, i8t, 1);
        let count = var(fb, i64t, 0);

        let head = fb.create_block();
        let body = fb.create_block();
        let generic = fb.create_block();
        let generic_whole = fb.create_block();
        let check_frag = fb.create_block();
        let frag = fb.create_block();
        let frag_whole = fb.create_block();
        let cut = fb.create_block();
        let exit = fb.create_block();

        fb.ins().jump(head, &[]);
        fb.switch_to_block(head);
        let n = fb.use_var(count);
        let done = fb.ins().icmp_imm_u(IntCC::Equal, n, 8);
        fb.ins().brif(done, exit, &[], body, &[]);

        fb.switch_to_block(body);
        let h = fb.use_var(nh);
        let a = fb.ins().icmp_imm_u(IntCC::Equal, h, 0);
        let b = fb.ins().icmp_imm_u(IntCC::Equal, h, 43);
        let c = fb.ins().icmp_imm_u(IntCC::Equal, h, 60);
        let ab = fb.ins().bor(a, b);
        let is_generic = fb.ins().bor(ab, c);
        fb.ins().brif(is_generic, generic, &[], check_frag, &[]);

        // Hop-by-hop, routing, destination options: 8 bytes at least, then (len + 1) * 8.
        fb.switch_to_block(generic);
        let at = fb.use_var(p);
        let fits8 = self.fits(fb, at, 8);
        fb.ins().brif(fits8, generic_whole, &[], cut, &[]);
        fb.switch_to_block(generic_whole);
        let hl = self.u8(fb, at, 1);
        let hl = fb.ins().iadd_imm_u(hl, 1);
        let hl = fb.ins().ishl_imm_u(hl, 3);
        let next_p = fb.ins().iadd(at, hl);
        let fits = fb
            .ins()
            .icmp(IntCC::UnsignedLessThanOrEqual, next_p, self.len);
        let advance = fb.create_block();
        fb.ins().brif(fits, advance, &[], cut, &[]);
        fb.switch_to_block(advance);
        let next = self.u8(fb, at, 0);
        fb.def_var(nh, next);
        fb.def_var(p, next_p);
        let n1 = fb.ins().iadd_imm_u(n, 1);
        fb.def_var(count, n1);
        fb.ins().jump(head, &[]);

        // Fragment: 8 bytes; a non-first fragment has no upper protocol.
        fb.switch_to_block(check_frag);
        let is_frag = fb.ins().icmp_imm_u(IntCC::Equal, h, 44);
        fb.ins().brif(is_frag, frag, &[], exit, &[]);
        fb.switch_to_block(frag);
        let at = fb.use_var(p);
        let fits8 = self.fits(fb, at, 8);
        fb.ins().brif(fits8, frag_whole, &[], cut, &[]);
        fb.switch_to_block(frag_whole);
        let off = self.be16(fb, at, 2);
        let off = fb.ins().ushr_imm_u(off, 3);
        let next = self.u8(fb, at, 0);
        fb.def_var(nh, next);
        let next_p = fb.ins().iadd_imm_u(at, 8);
        fb.def_var(p, next_p);
        let n1 = fb.ins().iadd_imm_u(n, 1);
        fb.def_var(count, n1);
        let later = fb.ins().icmp_imm_u(IntCC::NotEqual, off, 0);
        fb.ins().brif(later, cut, &[], head, &[]);

        // A cut-off extension header or a later fragment: no upper protocol.
        fb.switch_to_block(cut);
        set(fb, upper_ok, i8t, 0);
        fb.ins().jump(exit, &[]);

        fb.switch_to_block(exit);
        // Still in an extension header after the walk: no upper protocol.
        let h = fb.use_var(nh);
        let a = fb.ins().icmp_imm_u(IntCC::Equal, h, 0);
        let b = fb.ins().icmp_imm_u(IntCC::Equal, h, 43);
        let c = fb.ins().icmp_imm_u(IntCC::Equal, h, 60);
        let d = fb.ins().icmp_imm_u(IntCC::Equal, h, 44);
        let ab = fb.ins().bor(a, b);
        let cd = fb.ins().bor(c, d);
        let ext = fb.ins().bor(ab, cd);
        let ok = fb.use_var(upper_ok);
        let not_ext = fb.ins().bxor_imm_u(ext, 1);
        let ok = fb.ins().band(ok, not_ext);
        fb.def_var(upper_ok, ok);
        fb.def_var(upper, h);
        let at = fb.use_var(p);
        fb.def_var(after_l3, at);
    }

    fn emit_l4(
        &self,
        fb: &mut FunctionBuilder,
        level: Level,
        after_l3: Variable,
        end: Variable,
        upper_ok: Variable,
        upper: Variable,
    ) {
        let i64t = types::I64;
        let a = fb.use_var(after_l3);
        fb.def_var(self.l4, a);
        let l4_len = var(fb, i64t, 0);
        let ok = fb.use_var(upper_ok);
        let up = fb.use_var(upper);
        let ip = fb.use_var(self.ip);
        let ip6 = fb.use_var(self.ip6);

        // TCP: data offset >= 5 and the header captured.
        let is = fb.ins().icmp_imm_u(IntCC::Equal, up, 6);
        let fits = self.fits(fb, a, 20);
        let c = fb.ins().band(ok, is);
        let c = fb.ins().band(c, fits);
        if_then(fb, c, |fb| {
            let doff = self.u8(fb, a, 12);
            let doff = fb.ins().ushr_imm_u(doff, 4);
            let doff_ok = fb
                .ins()
                .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, doff, 5);
            let hl = fb.ins().ishl_imm_u(doff, 2);
            let hdr_end = fb.ins().iadd(a, hl);
            let fits = fb
                .ins()
                .icmp(IntCC::UnsignedGreaterThanOrEqual, self.len, hdr_end);
            let c = fb.ins().band(doff_ok, fits);
            if_then(fb, c, |fb| {
                set(fb, self.l4_kind, i64t, TCP);
                fb.def_var(l4_len, hl);
            });
        });
        let fits8 = self.fits(fb, a, 8);
        let ok8 = fb.ins().band(ok, fits8);
        for (proto, kind, only) in [(17, UDP, None), (1, ICMP, Some(ip)), (58, ICMP6, Some(ip6))] {
            let is = fb.ins().icmp_imm_u(IntCC::Equal, up, proto);
            let mut c = fb.ins().band(ok8, is);
            if let Some(only) = only {
                c = fb.ins().band(c, only);
            }
            if_then(fb, c, |fb| {
                set(fb, self.l4_kind, i64t, kind);
                set(fb, l4_len, i64t, 8);
            });
        }

        if level >= Level::Payload {
            // The payload: after L4, else after IP (and its extension headers), else after
            // Ethernet and the complete tags (ARP is not skipped); for IP it ends at the sane
            // IP length (computed above), never before it starts; otherwise at the frame end.
            let kind = fb.use_var(self.l4_kind);
            let hl = fb.use_var(l4_len);
            let l3 = fb.use_var(self.l3);
            let ip_any = fb.ins().bor(ip, ip6);
            let has_l4 = fb.ins().icmp_imm_u(IntCC::NotEqual, kind, 0);
            let after_l4 = fb.ins().iadd(a, hl);
            let ip_start = fb.ins().select(has_l4, after_l4, a);
            let ip_end = fb.use_var(end);
            let ip_end = fb.ins().umax(ip_end, ip_start);
            let s = fb.ins().select(ip_any, ip_start, l3);
            let e = fb.ins().select(ip_any, ip_end, self.len);
            fb.def_var(self.pay_start, s);
            fb.def_var(self.pay_end, e);
        }
    }

    /// Whether a protocol header is present (i8 flag).
    pub fn proto_present(&self, fb: &mut FunctionBuilder, p: Proto) -> Value {
        let kind = |fb: &mut FunctionBuilder, k: i64| {
            let v = fb.use_var(self.l4_kind);
            fb.ins().icmp_imm_u(IntCC::Equal, v, k)
        };
        match p {
            Proto::Eth => fb.use_var(self.eth),
            Proto::Vlan => {
                let v = fb.use_var(self.vlan);
                fb.ins().icmp_imm_u(IntCC::NotEqual, v, 0)
            }
            Proto::Arp => fb.use_var(self.arp),
            Proto::Ip => fb.use_var(self.ip),
            Proto::Ip6 => fb.use_var(self.ip6),
            Proto::Tcp => kind(fb, TCP),
            Proto::Udp => kind(fb, UDP),
            Proto::Icmp => kind(fb, ICMP),
            Proto::Icmp6 => kind(fb, ICMP6),
        }
    }

    /// Whether a field is present (i8 flag).
    pub fn field_present(&self, fb: &mut FunctionBuilder, field: Field) -> Value {
        match field {
            Field::EthType => fb.use_var(self.ety_ok),
            Field::PktLen => fb.ins().iconst(types::I8, 1),
            Field::PayloadLen => fb.use_var(self.eth),
            _ => match field.header() {
                FieldHeader::Proto(p) => self.proto_present(fb, p),
                FieldHeader::TcpOrUdp => {
                    let v = fb.use_var(self.l4_kind);
                    let t = fb.ins().icmp_imm_u(IntCC::Equal, v, TCP);
                    let u = fb.ins().icmp_imm_u(IntCC::Equal, v, UDP);
                    fb.ins().bor(t, u)
                }
                FieldHeader::Frame => fb.ins().iconst(types::I8, 1),
                FieldHeader::Payload => fb.use_var(self.eth),
            },
        }
    }

    /// Whether a field is 128 bits wide (loaded as i128; all others as i64).
    pub fn is_wide(field: Field) -> bool {
        matches!(field, Field::Ip6Src | Field::Ip6Dst)
    }

    /// The field's value. Emit only where [`Parse::field_present`] is known true.
    pub fn field_load(&self, fb: &mut FunctionBuilder, field: Field) -> Value {
        use Field::*;
        let zero = fb.ins().iconst(types::I64, 0);
        let l3 = fb.use_var(self.l3);
        let l4 = fb.use_var(self.l4);
        let flag = |fb: &mut FunctionBuilder, bit: i64| {
            let v = self.u8(fb, l4, 13);
            let v = fb.ins().ushr_imm_u(v, bit);
            fb.ins().band_imm_u(v, 1)
        };
        match field {
            EthSrc => self.be48(fb, zero, 6),
            EthDst => self.be48(fb, zero, 0),
            EthType => fb.use_var(self.ety),
            VlanId => {
                let at = fb.use_var(self.vlan);
                let v = self.be16(fb, at, 0);
                fb.ins().band_imm_u(v, 0xfff)
            }
            VlanPcp => {
                let at = fb.use_var(self.vlan);
                let v = self.u8(fb, at, 0);
                fb.ins().ushr_imm_u(v, 5)
            }
            IpSrc => self.be32(fb, l3, 12),
            IpDst => self.be32(fb, l3, 16),
            IpProto => self.u8(fb, l3, 9),
            IpTtl => self.u8(fb, l3, 8),
            IpDscp => {
                let v = self.u8(fb, l3, 1);
                fb.ins().ushr_imm_u(v, 2)
            }
            IpLen => self.be16(fb, l3, 2),
            IpFrag => {
                let v = self.be16(fb, l3, 6);
                let v = fb.ins().band_imm_u(v, 0x3fff);
                let ne = fb.ins().icmp_imm_u(IntCC::NotEqual, v, 0);
                fb.ins().uextend(types::I64, ne)
            }
            Ip6Src => self.be128(fb, l3, 8),
            Ip6Dst => self.be128(fb, l3, 24),
            Ip6Nh => self.u8(fb, l3, 6),
            Ip6Hlim => self.u8(fb, l3, 7),
            Ip6Flow => {
                let v = self.be32(fb, l3, 0);
                fb.ins().band_imm_u(v, 0xfffff)
            }
            TcpSport | UdpSport | L4Sport => self.be16(fb, l4, 0),
            TcpDport | UdpDport | L4Dport => self.be16(fb, l4, 2),
            TcpFlags => self.u8(fb, l4, 13),
            TcpFlagFin => flag(fb, 0),
            TcpFlagSyn => flag(fb, 1),
            TcpFlagRst => flag(fb, 2),
            TcpFlagPsh => flag(fb, 3),
            TcpFlagAck => flag(fb, 4),
            TcpFlagUrg => flag(fb, 5),
            IcmpType | Icmp6Type => self.u8(fb, l4, 0),
            IcmpCode | Icmp6Code => self.u8(fb, l4, 1),
            PktLen => {
                let max = fb.ins().iconst(types::I64, 65535);
                fb.ins().umin(self.len, max)
            }
            PayloadLen => {
                let len = self.payload_len(fb);
                let max = fb.ins().iconst(types::I64, 65535);
                fb.ins().umin(len, max)
            }
        }
    }

    /// Payload start offset (valid when `eth` is present and the level is `Payload`).
    pub fn payload_start(&self, fb: &mut FunctionBuilder) -> Value {
        fb.use_var(self.pay_start)
    }

    /// Payload length in bytes (valid when `eth` is present and the level is `Payload`).
    pub fn payload_len(&self, fb: &mut FunctionBuilder) -> Value {
        let s = fb.use_var(self.pay_start);
        let e = fb.use_var(self.pay_end);
        fb.ins().isub(e, s)
    }

    pub fn eth(&self, fb: &mut FunctionBuilder) -> Value {
        fb.use_var(self.eth)
    }
}
