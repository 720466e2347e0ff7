//! The HTTP `Range` header, as the peer API serves it: one byte range or the
//! whole representation, never several (no multipart bodies).

/// What a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    Full,
    /// Inclusive byte range.
    Part(u64, u64),
    Unsatisfiable,
}

/// Parse a `Range` header against a representation of `size` bytes. Only one
/// range is served: several ranges, or numbers that do not parse, are
/// unsatisfiable (never a multiplied body). Units other than bytes are ignored.
pub fn parse_range(value: &str, size: u64) -> RangeReq {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Unsatisfiable;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Unsatisfiable;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.len() <= 19 && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())?
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => RangeReq::Unsatisfiable,
        (true, false) => match num(b) {
            Some(n) if n > 0 && size > 0 => RangeReq::Part(size - n.min(size), size - 1),
            _ => RangeReq::Unsatisfiable,
        },
        (false, true) => match num(a) {
            Some(start) if start < size => RangeReq::Part(start, size - 1),
            _ => RangeReq::Unsatisfiable,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(start), Some(end)) if start <= end && start < size => {
                RangeReq::Part(start, end.min(size - 1))
            }
            _ => RangeReq::Unsatisfiable,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeReq::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-0", 10), Part(0, 0));
        assert_eq!(parse_range("bytes=9-9", 10), Part(9, 9));
        assert_eq!(parse_range("bytes=3-5", 10), Part(3, 5));
        assert_eq!(parse_range("bytes=3-", 10), Part(3, 9));
        assert_eq!(parse_range("bytes=-4", 10), Part(6, 9));
        assert_eq!(parse_range("bytes=-40", 10), Part(0, 9));
        assert_eq!(parse_range("bytes=5-100", 10), Part(5, 9));
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-3", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,2-3", 10), Unsatisfiable);
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999", 10),
            Unsatisfiable
        );
        assert_eq!(parse_range("bytes=abc", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=-", 10), Unsatisfiable);
        assert_eq!(parse_range("items=0-1", 10), Full);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
    }
}
