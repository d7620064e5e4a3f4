//! Dotted field paths: `title`, `location.lat`, `people.0.name`.
//!
//! A segment of digits is a list index (no map key of any schema is numeric).

use std::fmt;
use std::str::FromStr;

use automerge::Prop;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Segment {
    /// A map key.
    Key(String),
    /// A list index.
    Index(usize),
}

impl Segment {
    pub(crate) fn prop(&self) -> Prop {
        match self {
            Segment::Key(k) => Prop::Map(k.clone()),
            Segment::Index(i) => Prop::Seq(*i),
        }
    }
}

/// A non-empty path from the document root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FieldPath(Vec<Segment>);

/// Why a path does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad field path {0:?}: use dotted names such as title, location.lat or people.0.name")]
pub struct PathError(pub String);

/// Longest path accepted (documents are at most three levels deep; this bounds hostile input).
const MAX_DEPTH: usize = 8;

impl FieldPath {
    /// A path of one root key.
    pub fn root(key: &str) -> Self {
        FieldPath(vec![Segment::Key(key.to_owned())])
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// The root key (first segment), if it is a key.
    pub fn root_key(&self) -> Option<&str> {
        match self.0.first() {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// This path extended by one segment.
    pub fn child(&self, seg: Segment) -> Self {
        let mut v = self.0.clone();
        v.push(seg);
        FieldPath(v)
    }

    /// The first `n` segments.
    pub fn prefix(&self, n: usize) -> Self {
        FieldPath(self.0[..n.min(self.0.len())].to_vec())
    }

    pub(crate) fn split_last(&self) -> (&Segment, &[Segment]) {
        // A FieldPath is never empty: every constructor makes at least one segment.
        match self.0.split_last() {
            Some(split) => split,
            None => unreachable!("FieldPath is never empty"),
        }
    }
}

impl FromStr for FieldPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let segs: Vec<Segment> = s
            .split('.')
            .map(|part| {
                if part.is_empty() || part.len() > 64 {
                    Err(PathError(s.to_owned()))
                } else if part.bytes().all(|b| b.is_ascii_digit()) {
                    part.parse()
                        .map(Segment::Index)
                        .map_err(|_| PathError(s.to_owned()))
                } else if part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    Ok(Segment::Key(part.to_owned()))
                } else {
                    Err(PathError(s.to_owned()))
                }
            })
            .collect::<Result<_, _>>()?;
        if segs.len() > MAX_DEPTH || !matches!(segs.first(), Some(Segment::Key(_))) {
            return Err(PathError(s.to_owned()));
        }
        Ok(FieldPath(segs))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            match seg {
                Segment::Key(k) => f.write_str(k)?,
                Segment::Index(n) => write!(f, "{n}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for p in ["title", "location.lat", "people.0.name"] {
            assert_eq!(p.parse::<FieldPath>().expect(p).to_string(), p);
        }
        let p: FieldPath = "people.2.age".parse().expect("path");
        assert_eq!(p.segments()[1], Segment::Index(2));
        assert_eq!(p.root_key(), Some("people"));
    }

    #[test]
    fn refuses_bad_paths() {
        for p in [
            "",
            ".",
            "a..b",
            "0.title",
            "a b",
            "a.b.c.d.e.f.g.h.i",
            "ti-tle",
        ] {
            assert!(p.parse::<FieldPath>().is_err(), "{p}");
        }
    }
}
