//! The plugin's memory allocator in wasm builds: small blocks come from per-size free lists.
//!
//! Why: one event parses a payload into a dozen small blocks (strings, vectors, map nodes),
//! copies some and frees them all when the call returns. With the standard wasm allocator
//! (dlmalloc) allocating and freeing was over a third of a plugin's instructions per event
//! (docs/benchmarks.md, "Plugins"); here an allocation is a pop from its size class's free list
//! and a free is a push.
//!
//! - Blocks of up to [`LARGEST_CLASS`] bytes (alignment up to 16) are rounded up to a power of
//!   two. Each class keeps its freed blocks for reuse by that class: an instance holds about its
//!   own peak per class, within the memory cap the server sets (`plugins.memory_limit_bytes`).
//! - New small blocks are cut from chunks of [`CHUNK_BYTES`] taken from the standard allocator.
//! - Larger or more aligned blocks go to the standard allocator directly.
//!
//! It is on by default (feature `size-class-allocator`); a plugin with its own
//! `#[global_allocator]` turns the feature off. Plugin instances are single-threaded (wasm32
//! without threads), which is what makes the unsynchronised state below sound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Classes are 16, 32, ... 4096 bytes.
const SMALLEST_CLASS_SHIFT: u32 = 4;
const CLASS_COUNT: usize = 9;
pub(crate) const LARGEST_CLASS: usize = 1 << (SMALLEST_CLASS_SHIFT as usize + CLASS_COUNT - 1);
/// Every block is aligned to this (class sizes are multiples of it, chunks start aligned).
const BLOCK_ALIGN: usize = 16;
/// How much a class takes from the standard allocator when it has no free block.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// A freed block: its first word links to the next free block of its class.
struct FreeBlock {
    next: *mut FreeBlock,
}

struct State {
    free: [*mut FreeBlock; CLASS_COUNT],
    /// The unused rest of the current chunk.
    chunk_next: usize,
    chunk_end: usize,
}

/// The allocator the SDK installs in wasm builds (see the module documentation).
pub struct SizeClassAllocator {
    state: UnsafeCell<State>,
}

// SAFETY: only where the program has one thread (wasm without the atomics feature, which is
// what plugin instances are), so the state is never touched concurrently. Elsewhere the type is
// not `Sync`, so it cannot become a multi-threaded program's global allocator.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
unsafe impl Sync for SizeClassAllocator {}

impl SizeClassAllocator {
    pub const fn new() -> SizeClassAllocator {
        SizeClassAllocator {
            state: UnsafeCell::new(State {
                free: [ptr::null_mut(); CLASS_COUNT],
                chunk_next: 0,
                chunk_end: 0,
            }),
        }
    }
}

impl Default for SizeClassAllocator {
    fn default() -> Self {
        SizeClassAllocator::new()
    }
}

/// The class of a layout, or `None` for blocks the standard allocator serves.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() > LARGEST_CLASS || layout.align() > BLOCK_ALIGN {
        return None;
    }
    let rounded = layout
        .size()
        .max(1 << SMALLEST_CLASS_SHIFT)
        .next_power_of_two();
    Some((rounded.trailing_zeros() - SMALLEST_CLASS_SHIFT) as usize)
}

fn class_size(class: usize) -> usize {
    1 << (class + SMALLEST_CLASS_SHIFT as usize)
}

impl State {
    fn allocate(&mut self, class: usize) -> *mut u8 {
        let head = self.free[class];
        if !head.is_null() {
            // SAFETY: every pointer on a free list is a block of this class that was handed
            // out and freed, so it is valid to read its link.
            self.free[class] = unsafe { (*head).next };
            return head.cast();
        }
        self.cut_from_chunk(class_size(class))
    }

    fn cut_from_chunk(&mut self, size: usize) -> *mut u8 {
        if self.chunk_end - self.chunk_next < size {
            // What is left of the old chunk (less than one block of this class) stays unused.
            // SAFETY: a non-zero size and a power-of-two alignment.
            let chunk = unsafe {
                System.alloc(Layout::from_size_align_unchecked(CHUNK_BYTES, BLOCK_ALIGN))
            };
            if chunk.is_null() {
                return chunk;
            }
            self.chunk_next = chunk as usize;
            self.chunk_end = chunk as usize + CHUNK_BYTES;
        }
        let block = self.chunk_next as *mut u8;
        self.chunk_next += size;
        block
    }

    fn release(&mut self, block: *mut u8, class: usize) {
        let block = block.cast::<FreeBlock>();
        // SAFETY: the block is at least 16 bytes and 16-aligned, and the caller gave it back.
        unsafe {
            block.write(FreeBlock {
                next: self.free[class],
            })
        };
        self.free[class] = block;
    }
}

unsafe impl GlobalAlloc for SizeClassAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            // SAFETY: single-threaded (see the `Sync` impl) and never re-entered: the state's
            // methods do not allocate through the global allocator.
            Some(class) => unsafe { (*self.state.get()).allocate(class) },
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class_of(layout) {
            // SAFETY: as in `alloc`; the layout is the one the block was allocated with, so it
            // maps to the same class.
            Some(class) => unsafe { (*self.state.get()).release(block, class) },
            None => unsafe { System.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid size and alignment for the new layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // Still fits its block: a string growing within its class costs nothing.
            (Some(old), Some(new)) if old == new => block,
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: as for `alloc` and `dealloc`; the copy covers the smaller of the two.
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn small_blocks_round_up_to_a_power_of_two_and_large_ones_have_no_class() {
        assert_eq!(class_of(layout(1, 1)), Some(0));
        assert_eq!(class_of(layout(16, 8)), Some(0));
        assert_eq!(class_of(layout(17, 8)), Some(1));
        assert_eq!(class_of(layout(LARGEST_CLASS, 8)), Some(CLASS_COUNT - 1));
        assert_eq!(class_of(layout(LARGEST_CLASS + 1, 8)), None);
        assert_eq!(
            class_of(layout(64, 32)),
            None,
            "more aligned than blocks are"
        );
    }

    #[test]
    fn a_freed_block_is_reused_by_its_class_and_blocks_never_overlap() {
        let allocator = SizeClassAllocator::new();
        unsafe {
            let a = allocator.alloc(layout(24, 8));
            let b = allocator.alloc(layout(30, 8));
            assert_eq!(a as usize % BLOCK_ALIGN, 0);
            assert!((b as usize).abs_diff(a as usize) >= 32, "blocks overlap");
            a.write_bytes(0xAA, 24);
            b.write_bytes(0xBB, 30);
            assert_eq!(*a.add(23), 0xAA);
            allocator.dealloc(a, layout(24, 8));
            let c = allocator.alloc(layout(32, 16));
            assert_eq!(c, a, "the freed block of the class comes back first");
            let other_class = allocator.alloc(layout(8, 8));
            assert_ne!(other_class, a);
            assert_eq!(*b.add(29), 0xBB, "a neighbour is untouched");
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_classes_and_to_the_standard_allocator() {
        let allocator = SizeClassAllocator::new();
        unsafe {
            let block = allocator.alloc(layout(10, 1));
            for index in 0..10 {
                *block.add(index) = index as u8;
            }
            let same = allocator.realloc(block, layout(10, 1), 16);
            assert_eq!(same, block, "growing within the class stays in place");
            let grown = allocator.realloc(same, layout(16, 1), 100);
            let large = allocator.realloc(grown, layout(100, 1), LARGEST_CLASS * 2);
            for index in 0..10 {
                assert_eq!(*large.add(index), index as u8);
            }
            let small_again = allocator.realloc(large, layout(LARGEST_CLASS * 2, 1), 10);
            for index in 0..10 {
                assert_eq!(*small_again.add(index), index as u8);
            }
            allocator.dealloc(small_again, layout(10, 1));
        }
    }

    #[test]
    fn a_new_chunk_is_taken_when_the_current_one_is_used_up() {
        let allocator = SizeClassAllocator::new();
        let blocks_per_chunk = CHUNK_BYTES / LARGEST_CLASS;
        let mut blocks = Vec::new();
        unsafe {
            for index in 0..blocks_per_chunk * 2 + 1 {
                let block = allocator.alloc(layout(LARGEST_CLASS, 8));
                assert!(!block.is_null());
                block.write_bytes(index as u8, LARGEST_CLASS);
                blocks.push(block);
            }
            for (index, block) in blocks.iter().enumerate() {
                assert_eq!(
                    *block.add(LARGEST_CLASS - 1),
                    index as u8,
                    "block {index} intact"
                );
                allocator.dealloc(*block, layout(LARGEST_CLASS, 8));
            }
        }
    }
}
