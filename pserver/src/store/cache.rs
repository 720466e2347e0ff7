//! The hash cache (`data/hash-cache.json`): for each shared file its
//! size, mtime, BLAKE3 id and tree manifest, so a restart hashes only the
//! files that changed. It is written and read as a stream, entry by entry,
//! never built whole in memory: for a library of 100,000 files that would
//! be tens of MiB the allocator keeps after (RSS at rest).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;

use peerdex_common::fs::write_atomic_with;
use peerdex_proto::tree::Manifest;
use peerdex_proto::{FileId, FileName};
use serde::{Deserialize, Serialize};

use super::{Entry, Store};

/// One entry of the hash cache as read back (the key is the share name).
#[derive(Deserialize)]
struct CacheEntry {
    size: u64,
    mtime_ns: u128,
    file_id: String,
    /// [`Manifest::encode`], hex; checked against the id again when loaded.
    manifest: String,
    /// The name on disk, when not spelt as the key (the NFC name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_disk: Option<String>,
}

/// One entry of the hash cache as written, from the index's entry.
#[derive(Serialize)]
struct CacheEntryOut<'a> {
    size: u64,
    mtime_ns: u128,
    file_id: String,
    manifest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_disk: Option<&'a str>,
}

/// The index serialized as the hash cache, entry by entry, straight into
/// the file: a library of 100,000 files never has its cache built whole
/// in memory (tens of MiB that the allocator would keep after).
struct CacheOut<'a>(&'a BTreeMap<FileName, Entry>);

impl Serialize for CacheOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for e in self.0.values() {
            map.serialize_entry(
                e.name.as_str(),
                &CacheEntryOut {
                    size: e.size,
                    mtime_ns: e.mtime_ns,
                    file_id: e.id.to_hex(),
                    manifest: hex::encode(e.manifest.encode()),
                    on_disk: e.on_disk.as_deref(),
                },
            )?;
        }
        map.end()
    }
}

/// The hash cache read back entry by entry into the index's entries
/// (an entry that does not check out is skipped: that file is hashed).
struct CacheIn(BTreeMap<FileName, Entry>);

impl<'de> Deserialize<'de> for CacheIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = CacheIn;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of share names to cache entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<CacheIn, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((key, c)) = map.next_entry::<String, CacheEntry>()? {
                    if let Some(e) = cached_entry(key, c) {
                        out.insert(e.name.clone(), e);
                    }
                }
                Ok(CacheIn(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// The index entry a cache entry describes, if it checks out (a name,
/// an id, a manifest of that id and size).
fn cached_entry(key: String, c: CacheEntry) -> Option<Entry> {
    let name: FileName = key.parse().ok()?;
    // A cache written before names were normalized has the disk's
    // spelling as its key.
    let on_disk = c.on_disk.or_else(|| (key != name.as_str()).then_some(key));
    let id: FileId = c.file_id.parse().ok()?;
    let manifest = Manifest::decode(id, &hex::decode(c.manifest).ok()?)
        .ok()
        .filter(|m| m.size() == c.size)?;
    Some(Entry {
        name,
        on_disk,
        id,
        size: c.size,
        mtime_ns: c.mtime_ns,
        manifest: std::sync::Arc::new(manifest),
        replica: false,
    })
}

impl Store {
    fn cache_path(&self) -> PathBuf {
        self.data_dir.join("hash-cache.json")
    }

    /// The hash cache, read as a stream (never whole in memory); empty if
    /// there is none or it is damaged (every file is hashed then).
    pub(super) fn load_cache(&self) -> BTreeMap<FileName, Entry> {
        let Ok(file) = fs::File::open(self.cache_path()) else {
            return BTreeMap::new();
        };
        let mut de =
            serde_json::Deserializer::from_reader(io::BufReader::with_capacity(64 * 1024, file));
        match CacheIn::deserialize(&mut de).and_then(|c| de.end().map(|()| c)) {
            Ok(CacheIn(files)) => files,
            Err(e) => {
                tracing::warn!(error = %e, "hash cache unreadable; files will be re-hashed");
                BTreeMap::new()
            }
        }
    }

    /// Write the hash cache, streamed from the index under its lock (the
    /// lock is let go before the file is synced).
    pub(super) fn save_cache(&self) {
        let result = write_atomic_with(&self.cache_path(), |w| {
            let files = self.files.lock().unwrap();
            serde_json::to_writer(w, &CacheOut(&files)).map_err(io::Error::other)
        });
        if let Err(e) = result {
            let e = self.space.explain(e, &self.data_dir);
            tracing::warn!(error = %e, "cannot save hash cache; the previous one stays (files it misses are hashed again at the next start)");
        }
    }
}
