//! Interning storage: stable `u32` handles instead of pointers or keys, so
//! the index's cross-references stay small (a million files must fit well
//! under 1 GiB).

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
