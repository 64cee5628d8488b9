//! Issue 10: property tests of the socket frame decoder: any bytes a client sends give a
//! request, an error or end of stream, never a panic or an allocation past the frame cap;
//! what is written reads back.

use piku_proto::{MAX_FRAME_BYTES, ProtoError, Request, read_frame, write_frame};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut input = &bytes[..];
        let _ = read_frame::<_, Request>(&mut input);
    }

    #[test]
    fn a_length_past_the_cap_is_refused_before_reading(size in (MAX_FRAME_BYTES as u32 + 1)..=u32::MAX) {
        let bytes = size.to_be_bytes();
        let mut input = &bytes[..];
        let refused = matches!(
            read_frame::<_, Request>(&mut input),
            Err(ProtoError::FrameTooBig { .. })
        );
        prop_assert!(refused);
    }

    #[test]
    fn json_bodies_decode_or_fail_cleanly(body in "\\{\"type\": ?\"[a-z_]{0,10}\"(, ?\"[a-z]{1,8}\": ?(null|[0-9]{1,5}|\"[^\"]{0,12}\"|\\[\\]|\\{\\}))*\\}") {
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(body.as_bytes());
        let mut input = &bytes[..];
        let _ = read_frame::<_, Request>(&mut input);
    }

    #[test]
    fn what_is_written_reads_back(app in proptest::option::of(any::<String>())) {
        let request = Request::Status { app };
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &request).unwrap();
        let mut input = &bytes[..];
        let back: Option<Request> = read_frame(&mut input).unwrap();
        prop_assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&Some(request)).unwrap()
        );
    }
}
