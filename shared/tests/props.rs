//! Property tests of the parsers: random bytes never panic the frame codec
//! or any message decoder, and messages round-trip.

use bytes::BytesMut;
use proptest::prelude::*;
use shared::connection::{decode, encode, frame_codec};
use shared::proto::*;
use tokio_util::codec::{Decoder, Encoder};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_frame_codec_survives_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096), max in 1usize..2048) {
        let mut codec = frame_codec(max);
        let mut buf = BytesMut::from(&bytes[..]);
        // Decode until it stops: an error, the end, or no progress.
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            prop_assert!(frame.len() <= max);
        }
    }

    #[test]
    fn frames_round_trip(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
        let mut codec = frame_codec(1024);
        let mut buf = BytesMut::new();
        for f in &frames {
            codec.encode(bytes::Bytes::from(f.clone()), &mut buf).unwrap();
        }
        let mut back = Vec::new();
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            back.push(frame.to_vec());
        }
        prop_assert_eq!(back, frames);
    }

    #[test]
    fn decoders_survive_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Hello>(&bytes);
        let _ = decode::<HelloReply>(&bytes);
        let _ = decode::<Proof>(&bytes);
        let _ = decode::<Request<NmRequest>>(&bytes);
        let _ = decode::<Request<ControlRequest>>(&bytes);
        let _ = decode::<Request<SsRequest>>(&bytes);
        let _ = decode::<Reply<NmReply>>(&bytes);
        let _ = decode::<Reply<SsReply>>(&bytes);
        let _ = decode::<FileMeta>(&bytes);
        let _ = decode::<Tombstone>(&bytes);
    }

    #[test]
    fn messages_round_trip(
        id in any::<u64>(),
        file in ".{0,64}",
        content in ".{0,256}",
        index in any::<i64>(),
        version in any::<u64>(),
        epoch in any::<u64>(),
        mac in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let requests = vec![
            Request { id, body: NmRequest::Create { file: file.clone() } },
            Request { id, body: NmRequest::Locate { file: file.clone(), op: Op::Write } },
        ];
        for r in requests {
            let back: Request<NmRequest> = decode(&encode(&r).unwrap()).unwrap();
            prop_assert_eq!(back, r);
        }
        let notice = Request { id, body: ControlRequest::FileChanged { file: file.clone(), stats: FileStats { version, epoch, size: version / 2, ..FileStats::default() }, streamed: false, deleted: false, quiet: false } };
        let back: Request<ControlRequest> = decode(&encode(&notice).unwrap()).unwrap();
        prop_assert_eq!(back, notice);
        let ticket = Ticket { user: content.clone(), file: file.clone(), op: Op::Read, epoch, expires_ms: version, mac };
        let ss = vec![
            Request { id, body: SsRequest::WriteEdit { word_index: index, content: content.clone() } },
            Request { id, body: SsRequest::Read { file: file.clone(), ticket: ticket.clone() } },
        ];
        for r in ss {
            let back: Request<SsRequest> = decode(&encode(&r).unwrap()).unwrap();
            prop_assert_eq!(back, r);
        }
        let command = Request { id, body: SsCommand::ApplyDelete { file, version, epoch } };
        let back: Request<SsCommand> = decode(&encode(&command).unwrap()).unwrap();
        prop_assert_eq!(back, command);
    }
}
