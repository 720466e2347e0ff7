//! The peer API's `Range` header parser: any header value against any size
//! answers a range inside the representation, the whole of it, or
//! "unsatisfiable" — never a panic, never bytes past the end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerdex_proto::range::{RangeReq, parse_range};

fuzz_target!(|input: (&str, u64)| {
    let (value, size) = input;
    match parse_range(value, size) {
        RangeReq::Part(start, end) => {
            assert!(start <= end, "{value:?} @ {size}: {start} > {end}");
            assert!(end < size, "{value:?} @ {size}: end {end} past the end");
            assert!(value.contains('-') && !value.contains(','), "{value:?}");
        }
        RangeReq::Full => assert!(!value.trim().starts_with("bytes="), "{value:?}"),
        RangeReq::Unsatisfiable => {}
    }
});
