//! The Cranelift JIT: a whole [`Classifier`] compiled into one native function over raw frames.
//!
//! Stages, in the order the compiler runs them:
//! - `parse`: emitted header parsing with the absent-header rules of
//!   [`netvm_packet::Decoded`], only down to the deepest layer the policy's atoms read, every
//!   load dominated by a bounds check against the frame length.
//! - [`tree`]: for large header rule sets (ClassBench), a forest of HiCuts-style decision
//!   trees built at compile time under a memory budget; the emitted code computes the key from
//!   the parsed headers and walks the trees' tables, so the cost per packet does not grow
//!   linearly with the rules. Rules no tree can hold (payload, `or`, `not`, `in_port`, masks,
//!   IPv6) run after the forest, only those numbered below its answer.
//! - `codegen`: the function itself — parse, then the rules in order as short-circuit
//!   branches (the linear strategy) or the tree walk.
//! - [`payload`]: the Rust side of payload matching (every `contains` literal in one
//!   Aho-Corasick pass that stops at the first hit, every regex in one multi-pattern lazy
//!   DFA), called through a narrow `extern "C"` ABI, each run at most once per packet and
//!   only when a rule still needs the answer.
//!
//! The generated function has the signature
//! `extern "C" fn(frame: *const u8, len: usize, in_port: u32, scratch: *mut Scratch) -> u32`
//! and returns the index of the first matching rule, or `rules.len()` for the default. The
//! module also holds a burst function,
//! `extern "C" fn(frames: *const *const u8, lens: *const usize, n: usize, out: *mut u32, in_port: u64, scratch: *mut Scratch)`,
//! which [`Jit::classify_burst`] calls: with the forest it interleaves the tree walks of the
//! burst's frames and then runs the residual rules (see [`tree`]); with the linear strategy it
//! runs the same parse and rules in a loop over the burst (one call per burst, not an indirect
//! call per frame). Linear code with payload atoms has no burst function: its frames go one
//! call each, with the thread's scratch. The reference interpreter ([`crate::interp`]) is the
//! specification of both; `tests/differential.rs` checks they agree with it on random
//! policies (header rule sets, and header rules mixed with every other kind of rule, under
//! random forest budgets) and random, truncated and mutated frames, one at a time and in
//! bursts.
//!
//! What it does not do: it does not decide actions (the caller maps the rule index), and it
//! shares no mutable state between threads — [`Jit`] is `Send + Sync`. Payload scratch space
//! (which literals and regexes a packet matched, the lazy DFAs' caches) is per thread: each
//! thread keeps the scratch of the last `Jit` it ran in a thread-local slot, so a switch
//! thread classifies with no lock and no shared cache line, however many run the same `Jit`.

mod codegen;
mod parse;
pub mod payload;
pub mod tree;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use cranelift_codegen::ir::{types, AbiParam, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

use crate::interp::RegexError;
use crate::ir::Classifier;
use codegen::RuleEmitter;
use parse::Parse;
pub use payload::PayloadStats;
use payload::{PayloadMatcher, Scratch};

/// The most frames [`Jit::classify_burst`] takes per call.
pub const MAX_BURST: usize = 64;

/// Why a classifier cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    #[error("this machine is not supported by Cranelift: {0}")]
    UnsupportedHost(String),
    #[error("Cranelift rejected the classifier: {0}")]
    Codegen(String),
    #[error(transparent)]
    Regex(#[from] RegexError),
}

/// How the rules are searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The decision forest when at least [`Strategy::TREE_MIN_RULES`] rules are header rules
    /// ([`tree::header_rules`]; the others run after it, see [`tree`]) and its tables fit
    /// the budget; the linear code otherwise.
    Auto,
    /// Always the rules in order.
    Linear,
    /// The decision forest whenever some rule is a header rule, however few (for tests).
    Tree,
}

impl Strategy {
    /// Below this many header rules the linear code is as fast as a tree walk.
    pub const TREE_MIN_RULES: usize = 64;
}

type ClassifyFn = unsafe extern "C" fn(*const u8, usize, u32, *mut Scratch) -> u32;
/// `(frames, lens, n, out, in_port, scratch)`: a whole burst in one call — the forest's
/// interleaved walks and then the residual rules ([`tree::Tree::emit_burst`]; `scratch` is
/// the thread's payload scratch, or null without payload helpers), or the linear rules in a
/// loop ([`emit_linear_burst`], only without payload helpers; it ignores `scratch`).
type BurstFn =
    unsafe extern "C" fn(*const *const u8, *const usize, usize, *mut u32, u64, *mut Scratch);

/// Resets the payload scratch before a frame's residual rules in the forest's burst code.
///
/// # Safety
/// `scratch` is a live, exclusive [`Scratch`] (the one [`Jit::classify_burst`] passes).
unsafe extern "C" fn netvm_jit_reset_scratch(scratch: *mut Scratch) {
    // SAFETY: the burst code passes on the pointer `classify_burst` gave it, which is a live
    // exclusive scratch whenever the code calls payload helpers (the only code that calls
    // this function).
    if let Some(s) = unsafe { scratch.as_mut() } {
        s.reset();
    }
}

/// The JIT's code memory. Freed on drop.
struct Code(Option<JITModule>);

impl Drop for Code {
    fn drop(&mut self) {
        if let Some(module) = self.0.take() {
            // SAFETY: the only pointer into this memory is `Jit::func`, which lives in the same
            // `Jit` and is dropped with it; no call can be running (we hold `&mut`).
            unsafe { module.free_memory() };
        }
    }
}

// SAFETY: after `finalize_definitions` the module is never touched again except to free it on
// drop; the code it holds is immutable and callable from any thread.
unsafe impl Send for Code {}
// SAFETY: as above — no `&self` method reads or writes the module.
unsafe impl Sync for Code {}

/// Unique [`Jit::id`]s.
static NEXT_JIT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The payload scratch of the last `Jit` this thread ran, and that `Jit`'s id. A
    /// scratch points at its `Jit`'s matcher but is only handed back to that `Jit` (ids
    /// are never reused), so one left here after its `Jit` is gone is never used, only
    /// dropped (which reads nothing through the pointer).
    static SCRATCH: RefCell<Option<(u64, Scratch)>> = const { RefCell::new(None) };
}

/// A classifier compiled to native code.
pub struct Jit {
    func: ClassifyFn,
    /// The whole-burst function (see [`BurstFn`]); `None` for linear code with payload
    /// helpers.
    burst: Option<BurstFn>,
    rules: usize,
    strategy_used: Strategy,
    payload: Option<Box<PayloadMatcher>>,
    /// How long building `payload` took (part of the compile time).
    payload_build: std::time::Duration,
    /// Names this `Jit` in the thread-local scratch slot ([`SCRATCH`]).
    id: u64,
    /// Tables the tree walk reads through pointers baked into the code (kept alive here).
    _tree: Option<tree::Tree>,
    _code: Code,
}

impl Jit {
    /// Compiles with [`Strategy::Auto`].
    pub fn compile(ir: &Classifier) -> Result<Jit, JitError> {
        Jit::compile_with(ir, Strategy::Auto)
    }

    /// Compiles with `strategy` and the default forest budget ([`tree::default_budget`]).
    pub fn compile_with(ir: &Classifier, strategy: Strategy) -> Result<Jit, JitError> {
        Jit::compile_with_budget(ir, strategy, tree::default_budget(ir.rules.len()))
    }

    /// Compiles with `strategy`, the decision forest's tables within `tree_budget` bytes
    /// (a forest that would not fit is not built: the code is linear).
    pub fn compile_with_budget(
        ir: &Classifier,
        strategy: Strategy,
        tree_budget: usize,
    ) -> Result<Jit, JitError> {
        let needs_payload_helpers = !ir.literals.is_empty() || !ir.regexes.is_empty();
        let payload_started = std::time::Instant::now();
        let payload = if needs_payload_helpers {
            Some(Box::new(PayloadMatcher::new(ir)?))
        } else {
            None
        };
        let payload_build = payload_started.elapsed();
        let tree = match strategy {
            Strategy::Linear => None,
            Strategy::Auto if tree::header_rules(ir) < Strategy::TREE_MIN_RULES => None,
            Strategy::Auto | Strategy::Tree => tree::Tree::build_with(ir, tree_budget),
        };
        let strategy_used = if tree.is_some() {
            Strategy::Tree
        } else {
            Strategy::Linear
        };

        let mut flags = settings::builder();
        let set = |flags: &mut settings::Builder, k: &str, v: &str| {
            flags
                .set(k, v)
                .map_err(|e| JitError::Codegen(format!("setting {k}: {e}")))
        };
        set(&mut flags, "opt_level", "speed")?;
        set(&mut flags, "use_colocated_libcalls", "false")?;
        set(&mut flags, "is_pic", "false")?;
        let isa = cranelift_native::builder()
            .map_err(|e| JitError::UnsupportedHost(e.to_string()))?
            .finish(settings::Flags::new(flags))
            .map_err(|e| JitError::Codegen(e.to_string()))?;
        let call_conv = isa.default_call_conv();
        let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));

        let mut ctx = module.make_context();
        let sig = &mut ctx.func.signature;
        sig.call_conv = call_conv;
        sig.params.push(AbiParam::new(types::I64)); // frame
        sig.params.push(AbiParam::new(types::I64)); // len
        sig.params.push(AbiParam::new(types::I32)); // in_port
        sig.params.push(AbiParam::new(types::I64)); // scratch
        sig.returns.push(AbiParam::new(types::I32));
        let func_id = module
            .declare_function("netvm_classify", Linkage::Local, &ctx.func.signature)
            .map_err(|e| JitError::Codegen(e.to_string()))?;
        ctx.func.name = UserFuncName::user(0, func_id.as_u32());

        let target = module.target_config();
        let mut fctx = FunctionBuilderContext::new();
        {
            let mut fb = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let entry = fb.create_block();
            fb.append_block_params_for_function_params(entry);
            fb.switch_to_block(entry);
            let params = fb.block_params(entry).to_vec();
            let level = match &tree {
                Some(t) => t.level().max(codegen::level_of_rules(ir, t.residual())),
                None => codegen::level_of(ir),
            };
            let parse = Parse::emit(&mut fb, params[0], params[1], level);
            let helper_sig = needs_payload_helpers
                .then(|| fb.import_signature(codegen::helper_signature(call_conv)));
            let emitter = RuleEmitter {
                ir,
                parse,
                in_port: params[2],
                scratch: params[3],
                helper_sig,
                gated: payload.as_ref().map_or(&[][..], |m| m.gated_runs()),
            };
            match &tree {
                Some(t) => t.emit(&mut fb, &emitter),
                None => emitter.rules_linear(&mut fb),
            }
            fb.seal_all_blocks();
            fb.finalize(target);
        }
        module
            .define_function(func_id, &mut ctx)
            .map_err(|e| JitError::Codegen(format!("{e:?}")))?;
        module.clear_context(&mut ctx);

        // The burst function: the forest's interleaved walks, or the linear rules in a loop
        // (not when payload helpers need per-frame scratch: those call `func` per frame).
        let burst_id = match (&tree, needs_payload_helpers) {
            (None, true) => None,
            (tree, _) => {
                let sig = &mut ctx.func.signature;
                sig.call_conv = call_conv;
                for _ in 0..6 {
                    // frames, lens, n, out, in_port, scratch
                    sig.params.push(AbiParam::new(types::I64));
                }
                let id = module
                    .declare_function("netvm_classify_burst", Linkage::Local, &ctx.func.signature)
                    .map_err(|e| JitError::Codegen(e.to_string()))?;
                ctx.func.name = UserFuncName::user(0, id.as_u32());
                {
                    let mut fb = FunctionBuilder::new(&mut ctx.func, &mut fctx);
                    let entry = fb.create_block();
                    fb.append_block_params_for_function_params(entry);
                    fb.switch_to_block(entry);
                    let p = fb.block_params(entry).to_vec();
                    match tree {
                        Some(t) => {
                            let helper_sig = needs_payload_helpers
                                .then(|| fb.import_signature(codegen::helper_signature(call_conv)));
                            let reset = needs_payload_helpers.then(|| {
                                let mut sig = cranelift_codegen::ir::Signature::new(call_conv);
                                sig.params.push(AbiParam::new(types::I64));
                                (
                                    fb.import_signature(sig),
                                    netvm_jit_reset_scratch as *const () as usize as i64,
                                )
                            });
                            let in_port = {
                                use cranelift_codegen::ir::InstBuilder;
                                fb.ins().ireduce(types::I32, p[4])
                            };
                            let env = tree::BurstEnv {
                                ir,
                                in_port,
                                scratch: p[5],
                                helper_sig,
                                reset,
                                gated: payload.as_ref().map_or(&[][..], |m| m.gated_runs()),
                            };
                            t.emit_burst(&mut fb, [p[0], p[1], p[2], p[3]], &env)
                        }
                        None => emit_linear_burst(&mut fb, ir, [p[0], p[1], p[2], p[3], p[4]]),
                    }
                    fb.seal_all_blocks();
                    fb.finalize(target);
                }
                module
                    .define_function(id, &mut ctx)
                    .map_err(|e| JitError::Codegen(format!("{e:?}")))?;
                module.clear_context(&mut ctx);
                Some(id)
            }
        };
        module
            .finalize_definitions()
            .map_err(|e| JitError::Codegen(e.to_string()))?;
        let burst = burst_id.map(|id| {
            let code = module.get_finalized_function(id);
            // SAFETY: as for `func` below: the finalized function with exactly the signature
            // (i64, i64, i64, i64, i64, i64) -> () in the host's C calling convention.
            unsafe { std::mem::transmute::<*const u8, BurstFn>(code) }
        });
        let code = module.get_finalized_function(func_id);
        // SAFETY: `code` is the finalized function defined above with exactly this signature
        // (i64, i64, i32, i64) -> i32 in the host's default calling convention, which is
        // `extern "C"`; it stays mapped until `Code` is dropped with this `Jit`.
        let func = unsafe { std::mem::transmute::<*const u8, ClassifyFn>(code) };
        Ok(Jit {
            func,
            burst,
            rules: ir.rules.len(),
            strategy_used,
            payload,
            payload_build,
            id: NEXT_JIT_ID.fetch_add(1, Ordering::Relaxed),
            _tree: tree,
            _code: Code(Some(module)),
        })
    }

    /// The strategy the compiled code uses ([`Strategy::Linear`] or [`Strategy::Tree`]).
    pub fn strategy(&self) -> Strategy {
        self.strategy_used
    }

    /// What the decision forest's build did (trees, memory, build time), when there is one.
    pub fn tree_stats(&self) -> Option<&tree::TreeStats> {
        self._tree.as_ref().map(tree::Tree::stats)
    }

    /// The payload engine's sizes and build time (`None` without payload literals/regexes).
    pub fn payload_stats(&self) -> Option<(PayloadStats, std::time::Duration)> {
        self.payload
            .as_ref()
            .map(|m| (m.stats(), self.payload_build))
    }

    /// This thread's scratch for this `Jit` (a fresh one the first time, or after the
    /// thread ran another `Jit`); `None` when the code calls no payload helper.
    fn take_scratch(&self) -> Option<Scratch> {
        let matcher = self.payload.as_ref()?;
        let kept = SCRATCH
            .with(|slot| slot.borrow_mut().take())
            .and_then(|(id, scratch)| (id == self.id).then_some(scratch));
        Some(kept.unwrap_or_else(|| matcher.scratch()))
    }

    /// Keep `scratch` in this thread's slot for the next call.
    fn return_scratch(&self, scratch: Option<Scratch>) {
        if let Some(scratch) = scratch {
            SCRATCH.with(|slot| *slot.borrow_mut() = Some((self.id, scratch)));
        }
    }

    #[inline]
    fn call(&self, frame: &[u8], in_port: u32, scratch: &mut Option<Scratch>) -> u32 {
        let scratch_ptr = match scratch {
            Some(s) => {
                s.reset();
                s as *mut Scratch
            }
            None => std::ptr::null_mut(),
        };
        // SAFETY: `frame` is a live slice of `frame.len()` bytes, and the generated code reads
        // only inside it (every load is dominated by a bounds check, see `parse`). The scratch
        // pointer is either a live exclusive `Scratch` of this Jit's matcher or null, and null
        // only when the classifier has no payload helper atoms, so the code never passes it on.
        unsafe { (self.func)(frame.as_ptr(), frame.len(), in_port, scratch_ptr) }
    }

    /// The index of the first matching rule, or `None` for the default — exactly as
    /// [`crate::Interpreter::classify`].
    pub fn classify(&self, frame: &[u8], in_port: u32) -> Option<usize> {
        let mut scratch = self.take_scratch();
        let r = self.call(frame, in_port, &mut scratch) as usize;
        self.return_scratch(scratch);
        (r < self.rules).then_some(r)
    }

    /// Classifies up to [`MAX_BURST`] frames (all from `in_port`): `out[i]` is frame `i`'s rule
    /// index, or the number of rules for the default. Frames beyond `out.len()` or
    /// [`MAX_BURST`] are not classified.
    pub fn classify_burst(&self, frames: &[&[u8]], in_port: u32, out: &mut [u32]) {
        if let Some(burst) = self.burst {
            let n = frames.len().min(out.len()).min(MAX_BURST);
            let mut scratch = self.take_scratch();
            let scratch_ptr = scratch
                .as_mut()
                .map_or(std::ptr::null_mut(), |s| s as *mut Scratch);
            let mut ptrs = [std::ptr::null::<u8>(); MAX_BURST];
            let mut lens = [0usize; MAX_BURST];
            for (i, f) in frames[..n].iter().enumerate() {
                ptrs[i] = f.as_ptr();
                lens[i] = f.len();
            }
            // SAFETY: the first `n` (pointer, length) pairs are live frames, `n <= MAX_BURST`
            // and `out` has room for `n` results; the code reads only inside each frame (see
            // `parse`) and writes only `out[..n]`. The scratch pointer is a live exclusive
            // `Scratch` of this Jit's matcher, or null only when the code has no payload
            // helpers (linear burst code with payload helpers does not exist).
            unsafe {
                burst(
                    ptrs.as_ptr(),
                    lens.as_ptr(),
                    n,
                    out.as_mut_ptr(),
                    u64::from(in_port),
                    scratch_ptr,
                )
            };
            self.return_scratch(scratch);
            return;
        }
        let mut scratch = self.take_scratch();
        for (frame, slot) in frames.iter().zip(out.iter_mut()).take(MAX_BURST) {
            *slot = self.call(frame, in_port, &mut scratch);
        }
        self.return_scratch(scratch);
    }

    /// The number of rules (the value the raw results use for the default).
    pub fn rule_count(&self) -> usize {
        self.rules
    }
}

/// The linear strategy over a whole burst, `(frames, lens, n, out, in_port)`: for each
/// frame `i < n`, the same parse and rules as `netvm_classify`, its rule index stored in
/// `out[i]`. One call per burst instead of one indirect call per frame, and what depends
/// only on the port (`in_port` atoms) is computed from a loop invariant. Only for code
/// without payload helpers (the scratch pointer is null).
fn emit_linear_burst(
    fb: &mut FunctionBuilder,
    ir: &Classifier,
    [ptrs, lens, n, out, port]: [cranelift_codegen::ir::Value; 5],
) {
    use cranelift_codegen::ir::{BlockArg, InstBuilder, MemFlagsData};
    let i64t = types::I64;
    // SAFETY (of the loads and stores below): the caller passes `n <= MAX_BURST` live
    // (pointer, length) pairs in `ptrs`/`lens` and room for `n` results in `out`; every
    // index is `< n`.
    let mem = MemFlagsData::trusted();
    let in_port = fb.ins().ireduce(types::I32, port);
    let null = fb.ins().iconst(i64t, 0);
    let level = codegen::level_of(ir);
    let exit = fb.create_block();
    emit_frame_loop(fb, n, exit, |fb, i| {
        let (frame, len) = emit_frame(fb, ptrs, lens, i);
        let emitter = RuleEmitter {
            ir,
            parse: Parse::emit(fb, frame, len, level),
            in_port,
            scratch: null,
            helper_sig: None,
            gated: &[],
        };
        let done = fb.create_block();
        let rule = fb.append_block_param(done, types::I32);
        emitter.rules_linear_to(fb, &mut |fb, r| {
            fb.ins().jump(done, &[BlockArg::Value(r)]);
        });
        fb.switch_to_block(done);
        let off = fb.ins().ishl_imm_u(i, 2);
        let at = fb.ins().iadd(out, off);
        fb.ins().store(mem, rule, at, 0);
    });
    fb.switch_to_block(exit);
    fb.ins().return_(&[]);
}

/// Emits `for i in 0..n { body(i) }` over a burst's frame indices (`n` an `i64`), then
/// leaves the builder in `after`. `body` starts in the loop's body block and leaves the
/// builder in the block that goes on to the next index.
fn emit_frame_loop(
    fb: &mut FunctionBuilder,
    n: cranelift_codegen::ir::Value,
    after: cranelift_codegen::ir::Block,
    body: impl FnOnce(&mut FunctionBuilder, cranelift_codegen::ir::Value),
) {
    use cranelift_codegen::ir::condcodes::IntCC;
    use cranelift_codegen::ir::{BlockArg, InstBuilder};
    let head = fb.create_block();
    let i = fb.append_block_param(head, types::I64);
    let first = fb.create_block();
    let zero = fb.ins().iconst(types::I64, 0);
    fb.ins().jump(head, &[BlockArg::Value(zero)]);
    fb.switch_to_block(head);
    let finished = fb.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, i, n);
    fb.ins().brif(finished, after, &[], first, &[]);
    fb.switch_to_block(first);
    body(fb, i);
    let next = fb.ins().iadd_imm_u(i, 1);
    fb.ins().jump(head, &[BlockArg::Value(next)]);
    fb.switch_to_block(after);
}

/// Frame `i` of a burst: its pointer and length (`i64`s), loaded from the `ptrs` and
/// `lens` arrays the burst function was given.
fn emit_frame(
    fb: &mut FunctionBuilder,
    ptrs: cranelift_codegen::ir::Value,
    lens: cranelift_codegen::ir::Value,
    i: cranelift_codegen::ir::Value,
) -> (cranelift_codegen::ir::Value, cranelift_codegen::ir::Value) {
    use cranelift_codegen::ir::{InstBuilder, MemFlagsData};
    // SAFETY: the burst function's caller passes `n` live (pointer, length) pairs and
    // `i < n` (see `emit_frame_loop`).
    let mem = MemFlagsData::trusted();
    let off = fb.ins().ishl_imm_u(i, 3);
    let at = fb.ins().iadd(ptrs, off);
    let frame = fb.ins().load(types::I64, mem, at, 0);
    let at = fb.ins().iadd(lens, off);
    let len = fb.ins().load(types::I64, mem, at, 0);
    (frame, len)
}
