//! Byte ranges (RFC 9110 §14) answered from a stored complete response.

/// The byte range (first and last byte, inclusive) one `Range` field asks of a representation
/// `len` bytes long. `None` unless it is a single satisfiable `bytes` range: the cache then passes
/// the request on to the origin.
///
/// ```text
/// bytes=0-4  bytes=5-  bytes=-3
/// ```
pub(crate) fn single_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let (unit, spec) = value.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') || len == 0 {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let number = |text: &str| {
        let text = text.trim();
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| text.parse::<u64>().ok()).flatten()
    };
    if first.trim().is_empty() {
        let suffix = number(last)?;
        return (suffix > 0).then(|| (len.saturating_sub(suffix), len - 1));
    }
    let start = number(first)?;
    let end = if last.trim().is_empty() {
        len - 1
    } else {
        number(last)?.min(len - 1)
    };
    (start < len && start <= end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::single_range;

    #[test]
    fn single_byte_ranges() {
        assert_eq!(single_range("bytes=0-4", 10), Some((0, 4)));
        assert_eq!(single_range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(single_range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(single_range("bytes=-30", 10), Some((0, 9)));
        assert_eq!(single_range("bytes=8-100", 10), Some((8, 9)));
        assert_eq!(single_range("Bytes = 1-2", 10), Some((1, 2)));
        for unsupported in [
            "bytes=10-",
            "bytes=4-2",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=+1-2",
        ] {
            assert_eq!(single_range(unsupported, 10), None, "{unsupported}");
        }
        assert_eq!(single_range("bytes=-0", 10), None);
        assert_eq!(single_range("bytes=0-0", 0), None);
    }
}
