use std::fmt;

use uuid::Uuid;

/// A run id: a random (version 4) UUID, so ids are unguessable. On the wire it is always the
/// lowercase hyphenated form; parsing also accepts uppercase hex but no other UUID spelling,
/// so one run has exactly one URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(Uuid);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdError(String);

impl fmt::Display for RunIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a run id (expected a hyphenated UUID)",
            self.0
        )
    }
}

impl std::error::Error for RunIdError {}

impl RunId {
    /// Wrap a UUID the caller generated (the server uses `Uuid::new_v4`; this crate does not
    /// depend on a random source so that it stays I/O free on every target).
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    pub fn parse(s: &str) -> Result<Self, RunIdError> {
        // Only the 36-character hyphenated form: `Uuid::try_parse` also takes the simple,
        // braced and urn forms, which would give one run several URLs.
        if s.len() != 36 {
            return Err(RunIdError(s.to_owned()));
        }
        Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| RunIdError(s.to_owned()))
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl std::str::FromStr for RunId {
    type Err = RunIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for RunId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RunId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_hyphenated_form_parses() {
        let id = RunId::parse("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
        assert_eq!(id.to_string(), "0f8fad5b-d9cb-469f-a165-70867728950e");
        assert_eq!(
            RunId::parse("0F8FAD5B-D9CB-469F-A165-70867728950E").unwrap(),
            id
        );
        for bad in [
            "0f8fad5bd9cb469fa16570867728950e",
            "{0f8fad5b-d9cb-469f-a165-70867728950e}",
            "0f8fad5b-d9cb-469f-a165-70867728950",
            "not-a-uuid",
            "",
        ] {
            assert!(RunId::parse(bad).is_err(), "{bad}");
        }
    }
}
