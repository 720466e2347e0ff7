//! The gRPC messages as they arrive from the network: any bytes either fail
//! to decode or decode into messages whose conversions into validated
//! values (and into the REST DTOs) succeed or name the field, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerdex_proto::convert::SharedFile;
use peerdex_proto::{FileId, FileName, PeerId, PeerUrl, rest, v1};
use prost::Message;

fn shared(files: &[v1::SharedFile]) {
    for f in files {
        match SharedFile::try_from(f) {
            Ok(ok) => assert_eq!(
                v1::SharedFile::from(&ok).file_id,
                f.file_id.to_ascii_lowercase()
            ),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => {
            if let Ok(m) = v1::JoinRequest::decode(bytes) {
                let _ = m.peer_id.parse::<PeerId>();
                let _ = m.peer_url.parse::<PeerUrl>();
                shared(&m.files);
            }
        }
        1 => {
            if let Ok(m) = v1::PublishRequest::decode(bytes) {
                shared(&m.files);
            }
        }
        2 => {
            if let Ok(m) = v1::UnpublishRequest::decode(bytes) {
                for f in &m.files {
                    let _ = f.file_id.parse::<FileId>();
                    let _ = f.name.parse::<FileName>();
                }
            }
        }
        3 => {
            if let Ok(m) = v1::LocateResponse::decode(bytes) {
                for f in m.files {
                    let holders = f.holders.len();
                    let dto = rest::LocatedFile::from(f);
                    assert_eq!(dto.holders.len(), holders);
                }
            }
        }
        4 => {
            if let Ok(m) = v1::SearchResponse::decode(bytes) {
                for h in m.hits {
                    let _ = rest::SearchHit::from(h);
                }
            }
        }
        _ => {
            // Round trip: what we encode decodes to the same message.
            if let Ok(m) = v1::JoinRequest::decode(bytes) {
                let again = v1::JoinRequest::decode(m.encode_to_vec().as_slice());
                assert_eq!(again.as_ref(), Ok(&m));
            }
        }
    }
});
