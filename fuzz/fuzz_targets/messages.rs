//! Any bytes through every message decoder: errors, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::connection::decode;
use shared::proto::*;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<Hello>(data);
    let _ = decode::<HelloReply>(data);
    let _ = decode::<Proof>(data);
    let _ = decode::<Request<NmRequest>>(data);
    let _ = decode::<Request<SsRequest>>(data);
    let _ = decode::<Request<SsCommand>>(data);
    let _ = decode::<Request<PeerRequest>>(data);
    let _ = decode::<Request<StreamRequest>>(data);
    let _ = decode::<Request<ControlRequest>>(data);
    let _ = decode::<Reply<NmReply>>(data);
    let _ = decode::<Reply<SsReply>>(data);
    let _ = decode::<FileMeta>(data);
});
