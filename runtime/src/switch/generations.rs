//! Reload generations: the program new packets are classified by, and the programs a
//! reload retired that queued packets still need, kept alive until their last packet
//! has taken its next hop.

use super::*;

/// The program that classified a packet, and its generation on this switch thread. It
/// goes with the packet from hop to hop: every hop of the chain, and the final `out` or
/// drop, is that program's, and each VM hop that queues the packet holds it alive
/// ([`Generations::hold`]) however many reloads come meanwhile.
#[derive(Clone, Copy)]
pub(super) struct ClassifiedBy<'a> {
    pub(super) program: &'a Program,
    pub(super) generation: u32,
}

/// One switch thread's programs: the current one and the retired ones still held.
pub(super) struct Generations {
    /// The program new packets are classified by, and its generation.
    pub(super) current: Arc<Program>,
    pub(super) generation: u32,
    /// Packets queued to VMs under `current`.
    current_holds: usize,
    /// Programs replaced by a reload that queued packets still refer to:
    /// (generation, program, packets), freed when the count reaches 0.
    retired: Vec<(u32, Arc<Program>, usize)>,
}

impl Generations {
    pub(super) fn new(current: Arc<Program>) -> Self {
        Generations {
            current,
            generation: 0,
            current_holds: 0,
            retired: Vec::new(),
        }
    }

    /// A reload installed `program`: packets queued from now on belong to it; the one it
    /// replaces stays alive while queued packets still need its chains.
    pub(super) fn install(&mut self, program: Arc<Program>) {
        let old = std::mem::replace(&mut self.current, program);
        if self.current_holds > 0 {
            self.retired
                .push((self.generation, old, self.current_holds));
        }
        self.generation = self.generation.wrapping_add(1);
        self.current_holds = 0;
    }

    /// A packet classified by program `generation` was queued to a VM. A retired
    /// generation is still listed here: the packet's previous hold is released only
    /// after this hop ([`Engine::drain_vm`]).
    #[inline]
    pub(super) fn hold(&mut self, generation: u32) {
        if generation == self.generation {
            self.current_holds += 1;
        } else if let Some(r) = self.retired.iter_mut().find(|r| r.0 == generation) {
            r.2 += 1;
        }
    }

    /// That packet is done with its VM hop (and has taken its next one). A retired
    /// program goes with its last packet.
    #[inline]
    pub(super) fn release(&mut self, generation: u32) {
        if generation == self.generation {
            self.current_holds = self.current_holds.saturating_sub(1);
            return;
        }
        let Some(at) = self.retired.iter().position(|r| r.0 == generation) else {
            return;
        };
        let entry = &mut self.retired[at];
        entry.2 = entry.2.saturating_sub(1);
        if entry.2 == 0 {
            self.retired.swap_remove(at);
        }
    }

    /// The program of retired generation `generation`, while queued packets hold it.
    #[inline]
    pub(super) fn retired_program(&self, generation: u32) -> Option<Arc<Program>> {
        if generation == self.generation {
            return None;
        }
        let entry = self.retired.iter().find(|r| r.0 == generation)?;
        Some(entry.1.clone())
    }
}
