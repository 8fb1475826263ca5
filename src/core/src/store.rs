//! The narrow storage interface the state machines see, and two implementations that need no
//! disk: [`MemStore`] (ephemeral state and tests) and [`WriteBuffer`] (collects one batch of
//! writes over any base store, reading its own writes, for the server to commit atomically).

use std::collections::BTreeMap;
use std::ops::Bound;

pub trait Get {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
}

/// Ordered iteration over `[lo, hi)`; `visit` returns false to stop.
pub trait Scan: Get {
    fn scan(&self, lo: &[u8], hi: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool);
}

/// A store the state machine can change.
pub trait Txn: Get {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>);
    fn delete(&mut self, key: Vec<u8>);
}

/// An ordered in-memory store that counts the bytes it holds.
#[derive(Debug, Default)]
pub struct MemStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

impl MemStore {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Moves every key in `[lo, hi)` into `to` (a split hands ephemeral state to the new half).
    pub fn move_range(&mut self, lo: &[u8], hi: &[u8], to: &mut MemStore) {
        let keys: Vec<Vec<u8>> = self
            .map
            .range::<[u8], _>((Bound::Included(lo), Bound::Excluded(hi)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(v) = self.map.remove(&k) {
                self.bytes -= k.len() + v.len();
                to.put(k, v);
            }
        }
    }

    /// Removes every key in `[lo, hi)` for which `dead` says so, visiting at most `budget`
    /// keys from `from`; returns where to continue (None when the range is done).
    pub fn sweep(
        &mut self,
        lo: &[u8],
        hi: &[u8],
        from: Option<Vec<u8>>,
        budget: usize,
        dead: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let start = from.unwrap_or_else(|| lo.to_vec());
        let mut doomed = Vec::new();
        let mut next = None;
        for (n, (k, v)) in self
            .map
            .range::<[u8], _>((Bound::Included(start.as_slice()), Bound::Excluded(hi)))
            .enumerate()
        {
            if n == budget {
                next = Some(k.clone());
                break;
            }
            if dead(k, v) {
                doomed.push(k.clone());
            }
        }
        for k in doomed {
            self.delete(k);
        }
        next
    }
}

impl Get for MemStore {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.get(key).cloned()
    }
}

impl Scan for MemStore {
    fn scan(&self, lo: &[u8], hi: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) {
        if lo >= hi {
            return;
        }
        for (k, v) in self.map.range::<[u8], _>((Bound::Included(lo), Bound::Excluded(hi))) {
            if !visit(k, v) {
                return;
            }
        }
    }
}

impl Txn for MemStore {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let add = key.len() + value.len();
        if let Some(old) = self.map.insert(key.clone(), value) {
            self.bytes -= key.len() + old.len();
        }
        self.bytes += add;
    }

    fn delete(&mut self, key: Vec<u8>) {
        if let Some(old) = self.map.remove(&key) {
            self.bytes -= key.len() + old.len();
        }
    }
}

/// Pending writes over a read-only base: reads see the pending writes first. The server applies
/// a whole group of committed entries into one of these and commits it as one atomic batch.
pub struct WriteBuffer<'a, G: Get + ?Sized> {
    base: &'a G,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a, G: Get + ?Sized> WriteBuffer<'a, G> {
    pub fn new(base: &'a G) -> Self {
        WriteBuffer { base, pending: BTreeMap::new() }
    }

    /// The writes in key order; `None` is a delete.
    pub fn into_writes(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

impl<G: Get + ?Sized> Get for WriteBuffer<'_, G> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.pending.get(key) {
            Some(v) => v.clone(),
            None => self.base.get(key),
        }
    }
}

impl<G: Get + ?Sized> Txn for WriteBuffer<'_, G> {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memstore_counts_bytes_and_scans_in_order() {
        let mut m = MemStore::default();
        m.put(b"b".to_vec(), b"22".to_vec());
        m.put(b"a".to_vec(), b"1".to_vec());
        m.put(b"b".to_vec(), b"3".to_vec());
        assert_eq!(m.bytes(), 4);
        let mut seen = Vec::new();
        m.scan(b"a", b"c", &mut |k, _| {
            seen.push(k.to_vec());
            true
        });
        assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec()]);
        m.delete(b"a".to_vec());
        assert_eq!(m.bytes(), 2);
    }

    #[test]
    fn write_buffer_reads_its_own_writes() {
        let mut base = MemStore::default();
        base.put(b"x".to_vec(), b"old".to_vec());
        let mut w = WriteBuffer::new(&base);
        assert_eq!(w.get(b"x"), Some(b"old".to_vec()));
        w.put(b"x".to_vec(), b"new".to_vec());
        w.delete(b"y".to_vec());
        assert_eq!(w.get(b"x"), Some(b"new".to_vec()));
        assert_eq!(w.get(b"y"), None);
        let writes = w.into_writes();
        assert_eq!(writes.len(), 2);
    }

    #[test]
    fn sweep_is_bounded_and_resumable() {
        let mut m = MemStore::default();
        for i in 0..10u8 {
            m.put(vec![b'k', i], vec![i]);
        }
        let next = m.sweep(b"k", b"l", None, 4, &mut |_, v| v[0] % 2 == 0);
        assert_eq!(next, Some(vec![b'k', 4]));
        assert_eq!(m.len(), 8);
        let next = m.sweep(b"k", b"l", next, 100, &mut |_, v| v[0] % 2 == 0);
        assert_eq!(next, None);
        assert_eq!(m.len(), 5);
    }
}
