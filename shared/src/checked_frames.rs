//! Records on disk that a crash may have torn, as ss's write-ahead log and
//! packs and nm's journal keep them: length-delimited frames
//! ([`crate::connection::frame_codec`]), each a MessagePack envelope of a
//! CRC-32 and the record's MessagePack bytes. The checksum may also cover a
//! `seed` (a log's generation), so records an earlier generation left
//! behind fail it. Files written in place grow with [`write_zeros`]; a
//! frame of zeros reads as the end.

use crate::connection::frame_codec;
use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use tokio_util::codec::{Decoder, Encoder};

#[derive(Serialize, Deserialize)]
struct Envelope {
    crc: u32,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

fn checksum(seed: Option<u64>, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    if let Some(seed) = seed {
        hasher.update(&seed.to_le_bytes());
    }
    hasher.update(body);
    hasher.finalize()
}

/// `record` as one frame, its checksum covering `seed` if there is one.
pub fn encode<T: Serialize>(
    record: &T,
    seed: Option<u64>,
    max_frame: usize,
) -> io::Result<BytesMut> {
    let invalid =
        |e: rmp_serde::encode::Error| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let body = rmp_serde::to_vec_named(record).map_err(invalid)?;
    let envelope = rmp_serde::to_vec_named(&Envelope {
        crc: checksum(seed, &body),
        body,
    })
    .map_err(invalid)?;
    let mut frame = BytesMut::new();
    frame_codec(max_frame).encode(bytes::Bytes::from(envelope), &mut frame)?;
    Ok(frame)
}

/// Why decoding stopped before the end of the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A frame of zeros: the end of a file written in place.
    Zeros,
    /// A frame whose envelope is unreadable or fails its checksum.
    Checksum,
    /// A frame the codec refuses (a length beyond the largest frame).
    Torn(String),
    /// This many bytes at the end are less than a whole frame.
    Incomplete(usize),
}

/// The intact records of some bytes.
#[derive(Debug)]
pub struct Decoded<T> {
    /// Each record with where its frame lies, in order.
    pub records: Vec<(Range<u64>, T)>,
    /// The length of the intact prefix: where the next frame would go.
    pub intact: u64,
    /// Why decoding stopped early, if it did.
    pub stop: Option<Stop>,
}

/// Every whole frame at the start of `bytes` whose checksum (with `seed`)
/// holds, as the record's MessagePack bytes; stops at the first that is
/// zeros, torn, or fails its checksum.
pub fn decode_bodies(bytes: &[u8], seed: Option<u64>, max_frame: usize) -> Decoded<Vec<u8>> {
    let mut buf = BytesMut::from(bytes);
    let mut codec = frame_codec(max_frame);
    let total = bytes.len() as u64;
    let mut records = Vec::new();
    let mut start;
    loop {
        // Before the decode: a partial frame's length is taken off `buf`.
        start = total - buf.len() as u64;
        let stopped = |stop| Decoded {
            records: Vec::new(),
            intact: start,
            stop: Some(stop),
        };
        let frame = match codec.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                return Decoded {
                    records,
                    ..stopped(Stop::Torn(e.to_string()))
                }
            }
        };
        if frame.is_empty() {
            return Decoded {
                records,
                ..stopped(Stop::Zeros)
            };
        }
        let end = total - buf.len() as u64;
        match rmp_serde::from_slice::<Envelope>(&frame)
            .ok()
            .filter(|envelope| checksum(seed, &envelope.body) == envelope.crc)
        {
            Some(envelope) => records.push((start..end, envelope.body)),
            None => {
                return Decoded {
                    records,
                    ..stopped(Stop::Checksum)
                }
            }
        }
    }
    let rest = total - start;
    Decoded {
        records,
        intact: start,
        stop: (rest > 0).then_some(Stop::Incomplete(rest as usize)),
    }
}

/// [`decode_bodies`], each record read as a `T`; a record that does not
/// read as one ends the records there, as a failed checksum does.
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    seed: Option<u64>,
    max_frame: usize,
) -> Decoded<T> {
    let bodies = decode_bodies(bytes, seed, max_frame);
    let mut records = Vec::with_capacity(bodies.records.len());
    for (range, body) in bodies.records {
        match rmp_serde::from_slice::<T>(&body) {
            Ok(record) => records.push((range, record)),
            Err(_) => {
                return Decoded {
                    intact: range.start,
                    records,
                    stop: Some(Stop::Checksum),
                }
            }
        }
    }
    Decoded {
        records,
        intact: bodies.intact,
        stop: bodies.stop,
    }
}

/// Writes zeros into `file` from `from` up to `to`.
pub fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0; 256 << 10];
    let mut at = from;
    while at < to {
        let n = zeros.len().min((to - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_stops_at_zeros_a_bad_checksum_or_a_torn_tail() {
        let mut bytes = Vec::new();
        for n in 0..3u32 {
            bytes.extend_from_slice(&encode(&n, Some(7), 1 << 20).unwrap());
        }
        let whole = bytes.len() as u64;
        let all = decode::<u32>(&bytes, Some(7), 1 << 20);
        assert_eq!(
            all.records.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!((all.intact, all.stop), (whole, None));
        // Another seed: nothing holds.
        let other = decode::<u32>(&bytes, Some(8), 1 << 20);
        assert_eq!(
            (other.records.len(), other.intact, other.stop),
            (0, 0, Some(Stop::Checksum))
        );
        // Zeros after the records.
        let mut zeros = bytes.clone();
        zeros.resize(bytes.len() + 64, 0);
        let ended = decode::<u32>(&zeros, Some(7), 1 << 20);
        assert_eq!(
            (ended.records.len(), ended.intact, ended.stop),
            (3, whole, Some(Stop::Zeros))
        );
        // Half of the last frame.
        let cut = &bytes[..bytes.len() - 2];
        let torn = decode::<u32>(cut, Some(7), 1 << 20);
        assert_eq!(torn.records.len(), 2);
        assert_eq!(torn.intact, torn.records[1].0.end);
        assert!(matches!(torn.stop, Some(Stop::Incomplete(_))));
        // A flipped byte in the second record's checksummed bytes.
        let mut flipped = bytes.clone();
        let second = all.records[1].0.clone();
        flipped[second.end as usize - 1] ^= 1;
        let damaged = decode::<u32>(&flipped, Some(7), 1 << 20);
        assert_eq!((damaged.records.len(), damaged.intact), (1, second.start));
    }
}
