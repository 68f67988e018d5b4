//! Any bytes through the frame codec: no panic, no frame over the limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = shared::connection::frame_codec(4096);
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        assert!(frame.len() <= 4096);
    }
});
