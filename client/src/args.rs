//! Parsing command-line values into domain values, once, at the edge.
//!
//! `--set path=value` and `--add list=value` take a dotted [`FieldPath`] and a value that is JSON
//! when it parses as JSON and a plain string otherwise, so that the common cases need no quoting:
//!
//! ```
//! use desa_client::args::Assignment;
//! use serde_json::json;
//!
//! let a: Assignment = "title=Agent at harbour".parse().unwrap();
//! assert_eq!(a.value, json!("Agent at harbour"));
//! let b: Assignment = "location.lat=-3.25".parse().unwrap();
//! assert_eq!((b.path.to_string(), b.value), ("location.lat".to_string(), json!(-3.25)));
//! ```
//!
//! A string that happens to look like JSON (`title=123`) must be quoted as JSON (`title="123"`).

use std::fmt;
use std::str::FromStr;

use serde_json::Value;
use sync_core::FieldPath;

/// A `path=value` pair from `--set` or `--add`.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Where (a field for `--set`, a list for `--add`).
    pub path: FieldPath,
    /// What.
    pub value: Value,
}

/// Why a `path=value` argument does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    /// No `=` at all.
    #[error("expected PATH=VALUE (e.g. title=Agent at harbour, location.lat=-3.25), got {0:?}")]
    MissingEquals(String),
    /// The part before `=` is not a field path.
    #[error(transparent)]
    Path(#[from] sync_core::path::PathError),
}

impl FromStr for Assignment {
    type Err = AssignmentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, value) = s
            .split_once('=')
            .ok_or_else(|| AssignmentError::MissingEquals(s.to_owned()))?;
        Ok(Assignment {
            path: path.trim().parse()?,
            value: parse_value(value),
        })
    }
}

impl fmt::Display for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.path, self.value)
    }
}

/// A value from the command line: JSON if it parses as JSON, else the text itself.
///
/// Leading and trailing spaces are kept in strings (a shell user who quotes them means them), but
/// ignored when deciding whether the text is JSON.
pub fn parse_value(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|_| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;
    use sync_core::ReportId;

    fn parse(s: &str) -> Assignment {
        s.parse().expect(s)
    }

    #[test]
    fn dotted_path_with_number() {
        let a = parse("a.b=1");
        assert_eq!(a.path.to_string(), "a.b");
        assert_eq!(a.value, json!(1));
        assert_eq!(parse("location.lat=-3.25").value, json!(-3.25));
    }

    #[test]
    fn text_that_is_not_json_is_a_string() {
        let a = parse("title=Hello world");
        assert_eq!(a.path, FieldPath::root("title"));
        assert_eq!(a.value, json!("Hello world"));
        // Only the first `=` separates: the rest belongs to the value.
        assert_eq!(parse("title=a=b").value, json!("a=b"));
        assert_eq!(parse("title=").value, json!(""));
        assert_eq!(parse("title=\"123\"").value, json!("123"));
    }

    #[test]
    fn json_objects_lists_and_literals() {
        assert_eq!(parse(r#"x={"k":1}"#).value, json!({"k": 1}));
        assert_eq!(parse(r#"topics=["a","b"]"#).value, json!(["a", "b"]));
        assert_eq!(parse("flag=true").value, json!(true));
        assert_eq!(parse("gone=null").value, json!(null));
        // Broken JSON stays text rather than failing: the schema check will say what is wrong.
        assert_eq!(parse(r#"x={"k":"#).value, json!(r#"{"k":"#));
    }

    #[test]
    fn missing_equals_is_a_clear_error() {
        let err = "title".parse::<Assignment>().unwrap_err();
        assert_eq!(err, AssignmentError::MissingEquals("title".into()));
        assert!(err.to_string().contains("PATH=VALUE"), "{err}");
    }

    #[test]
    fn bad_path_is_refused() {
        for bad in ["=1", "a..b=1", "0.x=1", "ti-tle=x"] {
            assert!(
                matches!(bad.parse::<Assignment>(), Err(AssignmentError::Path(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn report_ids_parse_in_both_forms() {
        let id = ReportId::from_random([42; 16]);
        let plain: ReportId = id.to_string().parse().unwrap();
        let url: ReportId = format!("automerge:{id}").parse().unwrap();
        assert_eq!(plain, id);
        assert_eq!(url, id);
        assert!("automerge:nonsense".parse::<ReportId>().is_err());
        assert!("".parse::<ReportId>().is_err());
    }
}
