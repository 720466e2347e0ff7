//! Interning storage: stable `u32` handles instead of pointers or keys, so
//! the index's cross-references stay small, and a table from key to handle
//! that keeps no copy of the key.

use std::hash::{BuildHasher, Hash};

/// A `Vec<Option<T>>` with a free list: stable `u32` handles.
pub(super) struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Slab<T> {
    pub(super) fn new() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            items: Vec::with_capacity(n),
            free: Vec::new(),
        }
    }
    pub(super) fn insert(&mut self, v: T) -> u32 {
        if let Some(i) = self.free.pop() {
            self.items[i as usize] = Some(v);
            i
        } else {
            self.items.push(Some(v));
            u32::try_from(self.items.len() - 1).expect("fewer than 2^32 entries")
        }
    }
    pub(super) fn remove(&mut self, i: u32) -> Option<T> {
        let v = self.items.get_mut(i as usize)?.take();
        if v.is_some() {
            self.free.push(i);
        }
        v
    }
    pub(super) fn get(&self, i: u32) -> &T {
        self.items[i as usize].as_ref().expect("live slab handle")
    }
    /// The entry at `i`, if it is live.
    pub(super) fn try_get(&self, i: u32) -> Option<&T> {
        self.items.get(i as usize)?.as_ref()
    }
    pub(super) fn get_mut(&mut self, i: u32) -> &mut T {
        self.items[i as usize].as_mut().expect("live slab handle")
    }
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i as u32, v.as_ref()?)))
    }
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.items.iter_mut().flatten()
    }
    pub(super) fn len(&self) -> usize {
        self.items.len() - self.free.len()
    }
}

/// The lookup side of a slab: key → handle, where the key lives in the slab
/// entry and is stored only there. A `HashMap<K, u32>` would keep a second
/// copy of every key (a file id is 32 bytes, a name ~30 plus a pointer);
/// this table holds 4-byte handles, hashed with the std keyed SipHash, so
/// client-chosen keys cannot force collisions.
/// A key's hash, from a [`Handles::find`] that did not find it.
pub(super) struct Vacant(u64);

pub(super) struct Handles {
    table: hashbrown::HashTable<u32>,
    state: std::hash::RandomState,
}

impl Handles {
    pub(super) fn new() -> Self {
        Self::with_capacity(0)
    }

    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            table: hashbrown::HashTable::with_capacity(n),
            state: std::hash::RandomState::new(),
        }
    }

    /// The handle whose key (`key_of(handle)`) is `key`.
    pub(super) fn get<'a, K, F>(&self, key: &K, key_of: F) -> Option<u32>
    where
        K: Hash + Eq + ?Sized + 'a,
        F: Fn(u32) -> &'a K,
    {
        self.find(key, key_of).ok()
    }

    /// Like [`Handles::get`]; when absent, where to [`Handles::insert_at`]
    /// it without hashing the key again.
    pub(super) fn find<'a, K, F>(&self, key: &K, key_of: F) -> Result<u32, Vacant>
    where
        K: Hash + Eq + ?Sized + 'a,
        F: Fn(u32) -> &'a K,
    {
        let hash = self.state.hash_one(key);
        match self.table.find(hash, |&h| key_of(h) == key) {
            Some(&h) => Ok(h),
            None => Err(Vacant(hash)),
        }
    }

    /// Add `handle`, whose key is `key`; it must not be present yet.
    pub(super) fn insert<'a, K, F>(&mut self, handle: u32, key: &K, key_of: F)
    where
        K: Hash + Eq + ?Sized + 'a,
        F: Fn(u32) -> &'a K,
    {
        self.insert_at(Vacant(self.state.hash_one(key)), handle, key_of);
    }

    /// Add `handle` where [`Handles::find`] found its key absent (nothing
    /// may have been added since).
    pub(super) fn insert_at<'a, K, F>(&mut self, at: Vacant, handle: u32, key_of: F)
    where
        K: Hash + Eq + ?Sized + 'a,
        F: Fn(u32) -> &'a K,
    {
        let state = &self.state;
        self.table
            .insert_unique(at.0, handle, |&h| state.hash_one(key_of(h)));
    }

    /// Remove the handle whose key is `key`.
    pub(super) fn remove<'a, K, F>(&mut self, key: &K, key_of: F) -> Option<u32>
    where
        K: Hash + Eq + ?Sized + 'a,
        F: Fn(u32) -> &'a K,
    {
        let hash = self.state.hash_one(key);
        match self.table.find_entry(hash, |&h| key_of(h) == key) {
            Ok(entry) => Some(entry.remove().0),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_find_what_the_slab_holds_through_growth_and_removal() {
        let mut slab: Slab<String> = Slab::new();
        let mut handles = Handles::new();
        for i in 0..5000 {
            let h = slab.insert(format!("key {i}"));
            let key = slab.get(h).clone();
            handles.insert(h, key.as_str(), |x| slab.get(x).as_str());
        }
        for i in (0..5000).step_by(2) {
            let key = format!("key {i}");
            let h = handles.remove(key.as_str(), |x| slab.get(x).as_str());
            assert_eq!(h.and_then(|h| slab.remove(h)), Some(key));
        }
        for i in 0..5000 {
            let key = format!("key {i}");
            let found = handles.get(key.as_str(), |x| slab.get(x).as_str());
            assert_eq!(
                found.map(|h| slab.get(h).clone()),
                (i % 2 == 1).then_some(key)
            );
        }
        assert_eq!(handles.remove("key 0", |x| slab.get(x).as_str()), None);
    }
}
