//! The storage server's packs (`<storage>/packs/`), read from the on-disk
//! format as the harness reads everything else a server stores, sharing
//! none of its code: `packs/<n>` holds length-delimited frames, each a
//! MessagePack envelope (a CRC-32 and the MessagePack bytes of a record:
//! name, metadata, content); `packs/dropped` holds frames of (pack, offset)
//! naming records that no longer count. Of a name's records, the highest
//! stamp (epoch, version) counts, the later of equal ones; a file of its
//! own under `files/` counts over any record.

use bytes::BytesMut;
use serde::Deserialize;
use shared::proto::FileMeta;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use tokio_util::codec::Decoder;

#[derive(Deserialize)]
struct Envelope {
    crc: u32,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

#[derive(Deserialize)]
struct PackRecord {
    file: String,
    meta: FileMeta,
    #[serde(with = "serde_bytes")]
    content: Vec<u8>,
}

#[derive(Deserialize, PartialEq, Eq, Hash)]
struct Dropped {
    pack: u64,
    at: u64,
}

/// The intact records of `bytes`, with their offsets.
fn records<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Vec<(u64, T)> {
    let mut buf = BytesMut::from(bytes);
    let mut codec = shared::connection::frame_codec(64 << 20);
    let mut found = Vec::new();
    loop {
        let at = (bytes.len() - buf.len()) as u64;
        let Ok(Some(frame)) = codec.decode(&mut buf) else {
            return found;
        };
        let record = shared::connection::decode::<Envelope>(&frame)
            .ok()
            .filter(|e| crc32fast::hash(&e.body) == e.crc)
            .and_then(|e| shared::connection::decode::<T>(&e.body).ok());
        match record {
            Some(record) => found.push((at, record)),
            None => return found,
        }
    }
}

/// Every packed file of `storage` that has no file of its own: name →
/// (metadata, content).
pub fn packed_files(storage: &Path) -> BTreeMap<String, (FileMeta, Vec<u8>)> {
    let dir = storage.join("packs");
    let dropped: HashSet<Dropped> = std::fs::read(dir.join("dropped"))
        .map(|bytes| {
            records::<Dropped>(&bytes)
                .into_iter()
                .map(|(_, d)| d)
                .collect()
        })
        .unwrap_or_default();
    let mut numbers: Vec<u64> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let mut files: BTreeMap<String, (FileMeta, Vec<u8>)> = BTreeMap::new();
    for pack in numbers {
        let Ok(bytes) = std::fs::read(dir.join(pack.to_string())) else {
            continue;
        };
        for (at, record) in records::<PackRecord>(&bytes) {
            if dropped.contains(&Dropped { pack, at }) {
                continue;
            }
            let stamp = |m: &FileMeta| (m.stats.epoch, m.stats.version);
            let newer = files
                .get(&record.file)
                .is_none_or(|(held, _)| stamp(&record.meta) >= stamp(held));
            if newer {
                files.insert(record.file, (record.meta, record.content));
            }
        }
    }
    files.retain(|file, _| !storage.join("files").join(file).exists());
    files
}
