//! Decision tree for large header-only rule sets (to come).

use cranelift_frontend::FunctionBuilder;

use super::codegen::RuleEmitter;
use super::parse::Level;
use crate::ir::Classifier;

pub struct Tree;

impl Tree {
    pub fn build(_ir: &Classifier) -> Option<Tree> {
        None
    }
    pub(super) fn level(&self) -> Level {
        Level::L4
    }
    pub(super) fn emit(&self, fb: &mut FunctionBuilder, e: &RuleEmitter) {
        e.rules_linear(fb)
    }
}
