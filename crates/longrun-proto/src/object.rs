use std::fmt;

/// The name of an object (the thing a run is submitted to): a user object's name
/// `[A-Za-z0-9][A-Za-z0-9._-]{0,63}` ([`ObjectName::is_valid`]), or a name reserved for the
/// server's own objects, `_` and 1 to 63 lowercase letters ([`ObjectName::is_reserved`], e.g.
/// `_compose`, spec §25.10). No user object starts with `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName(String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectNameError(String);

impl fmt::Display for ObjectNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an object name: use 1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit (a leading _ is reserved for the server's own objects)",
            self.0
        )
    }
}

impl std::error::Error for ObjectNameError {}

impl ObjectName {
    pub const MAX_LEN: usize = 64;

    /// A user object's name or a reserved one.
    pub fn new(name: impl Into<String>) -> Result<Self, ObjectNameError> {
        let name = name.into();
        if Self::is_valid(&name) || Self::is_reserved(&name) {
            Ok(Self(name))
        } else {
            Err(ObjectNameError(name))
        }
    }

    /// A user object's name (a node topic, an object a server registers): not a reserved one.
    pub fn user(name: impl Into<String>) -> Result<Self, ObjectNameError> {
        let name = name.into();
        if Self::is_valid(&name) {
            Ok(Self(name))
        } else {
            Err(ObjectNameError(name))
        }
    }

    /// Whether `name` can be a user object's name (a node topic, an object a server
    /// registers): it starts with a letter or digit.
    pub fn is_valid(name: &str) -> bool {
        let bytes = name.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }

    /// Whether `name` is reserved for an object of the server itself: `_` followed by 1 to 63
    /// lowercase ASCII letters. A server serves some of them (`_compose`); the others are
    /// unknown objects there.
    pub fn is_reserved(name: &str) -> bool {
        let bytes = name.as_bytes();
        bytes.len() >= 2
            && bytes.len() <= Self::MAX_LEN
            && bytes[0] == b'_'
            && bytes[1..].iter().all(u8::is_ascii_lowercase)
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

    #[test]
    fn reserved_names_are_object_names_but_not_valid_user_names() {
        for reserved in ["_compose", "_health", "_x"] {
            assert!(ObjectName::is_reserved(reserved), "{reserved}");
            assert!(!ObjectName::is_valid(reserved), "{reserved}");
            assert_eq!(ObjectName::new(reserved).unwrap().as_str(), reserved);
            assert!(ObjectName::user(reserved).is_err());
        }
        for bad in ["_", "__", "_Compose", "_a.b", "_a-b", "_1", "compose"] {
            assert!(!ObjectName::is_reserved(bad), "{bad}");
        }
        assert!(ObjectName::new("_").is_err());
        assert!(ObjectName::new("_a/b").is_err());
    }
}
