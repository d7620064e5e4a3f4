//! What free text may hold.
//!
//! Narratives, notes, titles and names are read by coordinators on screens and in spreadsheets. A
//! C0 control character (U+0000–U+001F: NUL, escape, carriage return…) breaks exports and terminals; a bidirectional override
//! (U+202E RIGHT-TO-LEFT OVERRIDE and its kin) makes a text *display* differently from what it
//! says — a name or a phone number shown reversed. A change that inserts any of them is refused.
//! TAB and LF are ordinary text.
//!
//! The rule is judged on what a change *inserts*, not on the merged document, so a report that
//! already holds such a character (written before this rule) stays writable.

use automerge::legacy::{Key, OpType};
use automerge::{ExpandedChange, ScalarValue};

use super::{Refusal, RefusalCode};

/// Whether `c` may not appear in text written by a change.
pub fn is_forbidden(c: char) -> bool {
    (c < ' ' && c != '\t' && c != '\n')
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// The first forbidden character of `text`, if any.
pub fn first_forbidden(text: &str) -> Option<char> {
    text.chars().find(|c| is_forbidden(*c))
}

/// Refuse a change whose operations insert a forbidden character (in a string value, a text
/// splice, a mark or a map key).
pub fn check(change: &ExpandedChange) -> Result<(), Refusal> {
    for op in &change.operations {
        let value = match &op.action {
            OpType::Put(ScalarValue::Str(s)) => Some(s.as_str()),
            OpType::MarkBegin(mark) => match &mark.value {
                ScalarValue::Str(s) => Some(s.as_str()),
                _ => Some(mark.name.as_str()),
            },
            _ => None,
        };
        let key = match &op.key {
            Key::Map(k) => Some(k.as_str()),
            Key::Seq(_) => None,
        };
        if let Some(c) = value.into_iter().chain(key).find_map(first_forbidden) {
            return Err(refusal(c));
        }
    }
    Ok(())
}

/// The refusal for a forbidden character.
pub fn refusal(c: char) -> Refusal {
    Refusal::new(
        RefusalCode::Schema,
        format!(
            "text may not contain the control character U+{:04X} (only tab and line breaks)",
            u32::from(c)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_are_forbidden_tab_and_newline_are_not() {
        for c in [
            '\0', '\u{1b}', '\r', '\u{1f}', '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}',
        ] {
            assert!(is_forbidden(c), "{c:?}");
        }
        for c in ['\t', '\n', '\u{7f}', 'a', 'é', '\u{200F}', '\u{2070}', ' '] {
            assert!(!is_forbidden(c), "{c:?}");
        }
        assert_eq!(first_forbidden("Ani\u{202E}9876"), Some('\u{202E}'));
        assert_eq!(first_forbidden("line one\nline two\ttab"), None);
    }
}
