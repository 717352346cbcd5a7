use std::fmt;

/// The name of an object (the thing a run is submitted to): `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
/// Names starting with `_` are reserved for the server's own endpoints, which the first
/// character rule already excludes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName(String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectNameError(String);

impl fmt::Display for ObjectNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an object name: use 1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
            self.0
        )
    }
}

impl std::error::Error for ObjectNameError {}

impl ObjectName {
    pub const MAX_LEN: usize = 64;

    pub fn new(name: impl Into<String>) -> Result<Self, ObjectNameError> {
        let name = name.into();
        if Self::is_valid(&name) {
            Ok(Self(name))
        } else {
            Err(ObjectNameError(name))
        }
    }

    pub fn is_valid(name: &str) -> bool {
        let bytes = name.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ObjectName {
    type Err = ObjectNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for ObjectName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_grammar() {
        for ok in ["echo", "a", "A.b-c_d", "0", &"x".repeat(64)] {
            assert!(ObjectName::is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "_health",
            "-a",
            ".a",
            "a/b",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(!ObjectName::is_valid(bad), "{bad}");
        }
    }
}
