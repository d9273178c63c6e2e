//! The in-memory tier: an LRU of verified chunk bytes bounded by a byte budget rather than an entry count.

use bytes::Bytes;
use lru::LruCache;

use skiff_types::Digest;

/// Hot chunks kept in memory, least recently used dropped first once their sizes add up to more than the
/// budget. A chunk larger than the whole budget is never kept.
pub(crate) struct MemoryLru {
    entries: LruCache<Digest, Bytes>,
    budget: u64,
    bytes: u64,
}

impl MemoryLru {
    pub(crate) fn new(budget: u64) -> Self {
        MemoryLru {
            entries: LruCache::unbounded(),
            budget,
            bytes: 0,
        }
    }

    /// The bytes of `digest`, marking it most recently used.
    pub(crate) fn get(&mut self, digest: &Digest) -> Option<Bytes> {
        self.entries.get(digest).cloned()
    }

    /// Marks `digest` most recently used if present.
    pub(crate) fn promote(&mut self, digest: &Digest) {
        self.entries.promote(digest);
    }

    /// Keeps `data` as the most recently used entry, then drops least recently used entries until the total
    /// fits the budget. Data larger than the budget is not kept (and replaces nothing).
    pub(crate) fn put(&mut self, digest: Digest, data: Bytes) {
        let size = data.len() as u64;
        if size > self.budget {
            return;
        }
        if let Some(old) = self.entries.put(digest, data) {
            self.bytes -= old.len() as u64;
        }
        self.bytes += size;
        while self.bytes > self.budget {
            let Some((_, dropped)) = self.entries.pop_lru() else {
                break;
            };
            self.bytes -= dropped.len() as u64;
        }
    }

    /// Drops `digest` if present.
    pub(crate) fn remove(&mut self, digest: &Digest) {
        if let Some(old) = self.entries.pop(digest) {
            self.bytes -= old.len() as u64;
        }
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(fill: u8, len: usize) -> (Digest, Bytes) {
        let data = vec![fill; len];
        (Digest::of(&data), Bytes::from(data))
    }

    #[test]
    fn stays_within_the_byte_budget_dropping_the_least_recently_used() {
        let mut memory = MemoryLru::new(100);
        let (a, a_bytes) = chunk(b'a', 40);
        let (b, b_bytes) = chunk(b'b', 40);
        let (c, c_bytes) = chunk(b'c', 40);
        memory.put(a, a_bytes.clone());
        memory.put(b, b_bytes);
        assert_eq!((memory.bytes(), memory.len()), (80, 2));
        // Using `a` makes `b` the least recently used.
        assert_eq!(memory.get(&a), Some(a_bytes));
        memory.put(c, c_bytes);
        assert_eq!((memory.bytes(), memory.len()), (80, 2));
        assert!(memory.get(&b).is_none());
        assert!(memory.get(&a).is_some());
        assert!(memory.get(&c).is_some());
    }

    #[test]
    fn a_chunk_larger_than_the_budget_is_not_kept() {
        let mut memory = MemoryLru::new(100);
        let (small, small_bytes) = chunk(b's', 60);
        let (big, big_bytes) = chunk(b'b', 101);
        memory.put(small, small_bytes);
        memory.put(big, big_bytes);
        assert!(memory.get(&big).is_none());
        assert!(memory.get(&small).is_some(), "nothing is dropped for it");
        assert_eq!(memory.bytes(), 60);
    }

    #[test]
    fn exactly_the_budget_fits_and_a_zero_budget_keeps_only_empty_chunks() {
        let mut memory = MemoryLru::new(100);
        let (exact, exact_bytes) = chunk(b'e', 100);
        memory.put(exact, exact_bytes);
        assert_eq!(memory.bytes(), 100);

        let mut none = MemoryLru::new(0);
        let (one, one_bytes) = chunk(b'o', 1);
        none.put(one, one_bytes);
        assert_eq!((none.bytes(), none.len()), (0, 0));
    }

    #[test]
    fn re_putting_and_removing_keep_the_byte_count_exact() {
        let mut memory = MemoryLru::new(100);
        let (a, a_bytes) = chunk(b'a', 30);
        memory.put(a, a_bytes.clone());
        memory.put(a, a_bytes);
        assert_eq!((memory.bytes(), memory.len()), (30, 1));
        memory.remove(&a);
        memory.remove(&a);
        assert_eq!((memory.bytes(), memory.len()), (0, 0));
    }
}
