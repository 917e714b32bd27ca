//! Size bounds on what Drover writes: every message in a Job's status (error,
//! condition and step messages) and its result, so a Job object stays small
//! and a message copied into a Pub/Sub attribute fits Pub/Sub's limits.

/// Longest message Drover writes to a Job's status (an error, a condition,
/// a step): Pub/Sub's limit on an attribute value, so a status message can
/// always travel as a dead-letter attribute.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Largest `status.result` (serialized JSON) a Job keeps; a larger result
/// belongs in object storage, named by `status.resultRef`.
pub const MAX_RESULT_BYTES: usize = 16 * 1024;

/// Longest `status.resultRef` (a URL).
pub const MAX_RESULT_REF_BYTES: usize = 2048;

/// What a cut text ends with, so a reader knows it is not the whole.
const CUT_MARK: &str = "… (truncated)";

/// `text` if it fits `max` bytes, else its longest prefix that fits with the
/// cut mark, cut at a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(CUT_MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end == 0 {
        // Not even the mark fits: a bare prefix is all there is room for.
        let mut end = max.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        return text[..end].to_owned();
    }
    format!("{}{CUT_MARK}", &text[..end])
}

/// A status message bounded by [`MAX_MESSAGE_BYTES`].
pub fn message(text: &str) -> String {
    truncate(text, MAX_MESSAGE_BYTES)
}

/// The serialized size of a result.
pub fn result_bytes(result: &serde_json::Value) -> usize {
    serde_json::to_vec(result).map_or(usize::MAX, |bytes| bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_that_fits_is_kept_whole() {
        assert_eq!(truncate("short", 5), "short");
    }

    #[test]
    fn a_long_text_is_cut_to_the_bound_with_a_mark() {
        let cut = truncate(&"x".repeat(5000), MAX_MESSAGE_BYTES);
        assert!(cut.len() <= MAX_MESSAGE_BYTES, "{}", cut.len());
        assert!(cut.ends_with(CUT_MARK));
        assert!(cut.starts_with("xxxx"));
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        for max in 0..40 {
            let cut = truncate(&"é".repeat(100), max);
            assert!(cut.len() <= max, "{max}: {}", cut.len());
        }
    }
}
