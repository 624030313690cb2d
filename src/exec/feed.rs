//! The task feed: output chunks in traversal order, each preceded by the decodes it is the
//! first to need, with every decoded chunk's consumers counted so that it leaves the window
//! with its last one. Invariant: a computation's decodes are handed out before it.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use crate::grid::{ChunkSet, indices_in, product};
use crate::halo::{Segment, segments};

use super::task::{Ctx, Slot, SlotState, Task};

/// Generates tasks in traversal order: for each output chunk, the decodes it is the first to
/// need, then its computation.
pub(super) struct Feed<'a, 'c> {
    pub(super) ctx: &'c Ctx<'a>,
    pub(super) tiles: std::vec::IntoIter<Vec<Range<u64>>>,
    pub(super) layers: Range<u64>,
    pub(super) done: &'c ChunkSet,
    pub(super) tile: Option<Vec<Range<u64>>>,
    /// The current tile's number (the window's slots are per tile).
    pub(super) tile_no: u64,
    pub(super) layer: u64,
    pub(super) chunks: std::vec::IntoIter<Vec<u64>>,
    pub(super) queue: VecDeque<Task>,
}

impl<'a, 'c> Feed<'a, 'c> {
    pub(super) fn new(
        ctx: &'c Ctx<'a>,
        tiles: Vec<Vec<Range<u64>>>,
        layers: Range<u64>,
        done: &'c ChunkSet,
    ) -> Self {
        Feed {
            ctx,
            tiles: tiles.into_iter(),
            layer: layers.start,
            layers,
            done,
            tile: None,
            tile_no: 0,
            chunks: Vec::new().into_iter(),
            queue: VecDeque::new(),
        }
    }

    /// The output chunks of the current tile (not done) whose blocks read input chunk `c`.
    pub(super) fn consumers(&self, input: usize, c: &[u64]) -> u64 {
        let tile = self.tile.as_ref().expect("planning happens inside a tile");
        let lists: Vec<Vec<u64>> = self.ctx.readers[input]
            .iter()
            .zip(c)
            .enumerate()
            .map(|(a, (r, &ci))| {
                let range = if a == 0 { &self.layers } else { &tile[a] };
                r[ci as usize]
                    .iter()
                    .copied()
                    .filter(|o| range.contains(o))
                    .collect()
            })
            .collect();
        product(&lists)
            .iter()
            .filter(|o| !self.done.contains(o) && !self.skips(o))
            .count() as u64
    }

    /// The box of input chunk `c` (array coordinates) that the current tile's output chunks
    /// read through the boundary mode: on each axis, the hull of what each consumer along it
    /// reads of the chunk. A chunk only read for a halo keeps a slab of the halo's width.
    pub(super) fn keep_box(&self, input: usize, c: &[u64]) -> Vec<Range<u64>> {
        let tile = self.tile.as_ref().expect("planning happens inside a tile");
        let ctx = self.ctx;
        let creg = ctx.inputs[input].grid.chunk_region(c);
        let oc = ctx.out_grid.chunk_shape();
        creg.ranges()
            .iter()
            .enumerate()
            .map(|(a, r)| {
                let range = if a == 0 { &self.layers } else { &tile[a] };
                let (before, after) = ctx.halo[a];
                let mut hull: Option<Range<u64>> = None;
                for &o in ctx.readers[input][a][c[a] as usize]
                    .iter()
                    .filter(|o| range.contains(o))
                {
                    let start = (o * oc[a]) as i64 - before as i64;
                    let end = (((o + 1) * oc[a]).min(ctx.shape[a]) + after) as i64;
                    for src in segments(start, end, ctx.shape[a], ctx.boundary)
                        .iter()
                        .filter_map(Segment::src_range)
                    {
                        let (lo, hi) = (src.start.max(r.start), src.end.min(r.end));
                        if lo < hi {
                            hull = Some(match hull {
                                Some(h) => h.start.min(lo)..h.end.max(hi),
                                None => lo..hi,
                            });
                        }
                    }
                }
                hull.unwrap_or_else(|| r.clone())
            })
            .collect()
    }

    /// Whether output chunk `idx` is recorded as absent without computing: every input chunk
    /// it reads is absent, and the kernel maps fill to the output's fill.
    fn skips(&self, idx: &[u64]) -> bool {
        self.ctx.stored_inputs.is_some() && self.all_absent(&self.ctx.needed(idx))
    }

    /// Whether every chunk of `needed` (per input) is absent.
    fn all_absent(&self, needed: &[Vec<Vec<u64>>]) -> bool {
        self.ctx.stored_inputs.as_ref().is_some_and(|stored| {
            needed
                .iter()
                .zip(stored)
                .all(|(chunks, set)| chunks.iter().all(|c| !set.contains(c)))
        })
    }

    /// Queues the tasks for output chunk `idx`.
    pub(super) fn plan(&mut self, idx: Vec<u64>) {
        let needed = self.ctx.needed(&idx);
        if self.all_absent(&needed) {
            // Every input chunk it reads is absent (fill value), and the kernel maps fill to
            // the output's fill: the chunk is absent too, with nothing to decode.
            self.queue.push_back(Task::Skip(idx));
            return;
        }
        let mut w = self
            .ctx
            .window
            .lock()
            .expect("no panics holding the window");
        let mut per_input = Vec::with_capacity(needed.len());
        for (input, chunks) in needed.into_iter().enumerate() {
            let mut slots = Vec::with_capacity(chunks.len());
            for c in chunks {
                let slot = match w.get(&(self.tile_no, input, c.clone())) {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(Slot {
                            tile: self.tile_no,
                            input,
                            keep: self.keep_box(input, &c),
                            idx: c.clone(),
                            data: OnceLock::new(),
                            state: Mutex::new(SlotState {
                                remaining: self.consumers(input, &c),
                            }),
                        });
                        w.insert((self.tile_no, input, c), s.clone());
                        self.queue.push_back(Task::Decode(s.clone()));
                        s
                    }
                };
                slots.push(slot);
            }
            per_input.push(slots);
        }
        drop(w);
        self.queue.push_back(Task::Compute(idx, per_input));
    }
}

impl Iterator for Feed<'_, '_> {
    type Item = Task;

    fn next(&mut self) -> Option<Task> {
        loop {
            if let Some(t) = self.queue.pop_front() {
                return Some(t);
            }
            if let Some(idx) = self.chunks.next() {
                if !self.done.contains(&idx) {
                    self.plan(idx);
                }
                continue;
            }
            // Next layer of the tile, or the next tile.
            match &self.tile {
                Some(tile) if self.layer + 1 < self.layers.end => {
                    self.layer += 1;
                    let mut b = tile.clone();
                    b[0] = self.layer..self.layer + 1;
                    self.chunks = indices_in(&b).into_iter();
                }
                _ => {
                    // A new tile starts from the first layer, with slots of its own: the old
                    // tile's leave the window with their last consumer.
                    let tile = self.tiles.next()?;
                    self.layer = self.layers.start;
                    if self.layers.is_empty() {
                        return None;
                    }
                    let mut b = tile.clone();
                    b[0] = self.layer..self.layer + 1;
                    self.chunks = indices_in(&b).into_iter();
                    self.tile = Some(tile);
                    self.tile_no += 1;
                }
            }
        }
    }
}
