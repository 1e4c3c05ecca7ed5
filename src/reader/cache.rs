//! A bounded cache of decompressed chunks, least recently used out first. Shared by all
//! threads reading an image; bounded in bytes, so memory stays fixed whatever is read.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// (blob index, chunk index in that blob).
pub type ChunkKey = (u32, u32);

#[derive(Default)]
struct Inner {
    map: HashMap<ChunkKey, (Arc<Vec<u8>>, u64)>,
    order: BTreeMap<u64, ChunkKey>,
    bytes: usize,
    clock: u64,
}

/// The cache.
pub struct ChunkCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes of chunk data.
    pub fn new(capacity: usize) -> Self {
        ChunkCache {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    /// The chunk, if cached; marks it recently used.
    pub fn get(&self, key: ChunkKey) -> Option<Arc<Vec<u8>>> {
        let mut inner = self.inner.lock().expect("cache lock");
        inner.clock += 1;
        let now = inner.clock;
        let (data, stamp) = inner.map.get_mut(&key)?;
        let old = std::mem::replace(stamp, now);
        let data = data.clone();
        inner.order.remove(&old);
        inner.order.insert(now, key);
        Some(data)
    }

    /// Adds a chunk, evicting the least recently used until it fits.
    pub fn insert(&self, key: ChunkKey, data: Arc<Vec<u8>>) {
        if data.len() > self.capacity {
            return;
        }
        let mut inner = self.inner.lock().expect("cache lock");
        if inner.map.contains_key(&key) {
            return;
        }
        while inner.bytes + data.len() > self.capacity {
            let Some((_, victim)) = inner.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = inner.map.remove(&victim) {
                inner.bytes -= old.len();
            }
        }
        inner.clock += 1;
        let now = inner.clock;
        inner.bytes += data.len();
        inner.order.insert(now, key);
        inner.map.insert(key, (data, now));
    }

    /// Bytes cached now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("cache lock").bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_bound() {
        let cache = ChunkCache::new(300);
        for i in 0..3 {
            cache.insert((0, i), Arc::new(vec![i as u8; 100]));
        }
        assert!(cache.get((0, 0)).is_some()); // 0 is now the most recent
        cache.insert((0, 3), Arc::new(vec![3; 100]));
        assert!(
            cache.get((0, 1)).is_none(),
            "least recently used goes first"
        );
        assert!(cache.get((0, 0)).is_some());
        assert!(cache.get((0, 3)).is_some());
        assert!(cache.bytes() <= 300);
        cache.insert((0, 9), Arc::new(vec![0; 301]));
        assert!(
            cache.get((0, 9)).is_none(),
            "larger than the whole cache: not kept"
        );
    }
}
