//! Values parsed at the edge: once one of these exists, it is valid.

use crate::error::{Error, Result};
pub use crate::values::{RunId, SessionId, TokenId};

/// A model name as `claude --model` takes it: an alias (`sonnet`) or a full name, up to 200
/// letters, digits and `-_.:/@[]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model(String);

impl Model {
    pub fn parse(s: &str) -> Result<Model> {
        let ok = !s.is_empty()
            && s.len() <= 200
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '-' | '_' | '.' | ':' | '/' | '@' | '[' | ']')
            });
        if ok {
            Ok(Model(s.to_string()))
        } else {
            Err(Error::bad_request(format!(
                "invalid model {:?}: a model name or alias, letters, digits and -_.:/@[]",
                clip(s)
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of a session: 1-63 of `a-z`, `0-9`, `_` and `-` (a token of a NATS subject as
/// the agent protocol writes them, unescaped).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionName(String);

impl SessionName {
    pub fn parse(s: &str) -> Result<SessionName> {
        let ok = (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
        if ok {
            Ok(SessionName(s.to_string()))
        } else {
            Err(Error::bad_request(format!(
                "invalid session name {:?}: 1-63 of a-z, 0-9, '_' and '-'",
                clip(s)
            )))
        }
    }

    pub fn into_string(self) -> String {
        self.0
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of an app: 1-64 letters, digits, '-', '_' or '.'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppName(String);

impl AppName {
    pub fn parse(s: &str) -> Result<AppName> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(AppName(s.to_string()))
        } else {
            Err(Error::bad_request(format!(
                "invalid app {:?}: 1-64 letters, digits, '-', '_' or '.'",
                clip(s)
            )))
        }
    }

    /// The name of an app as the ledger holds it: it was checked when its token was made (the
    /// bootstrap token's app is `admin`).
    pub fn stored(s: String) -> AppName {
        AppName(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AppName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for AppName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<String> for AppName {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

/// An attached file's name: a plain name, never a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName(String);

impl FileName {
    pub fn parse(s: &str) -> Result<FileName> {
        let bad = s.is_empty()
            || s.len() > 255
            || s == "."
            || s == ".."
            || s.contains("..")
            || s.chars().any(|c| c == '/' || c == '\\' || c.is_control())
            || crate::agent::reserved_file_name(s);
        if bad {
            Err(Error::bad_request(format!(
                "invalid file name {:?}: a plain name, without '/', '\\\\' or '..'",
                clip(s)
            )))
        } else {
            Ok(FileName(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A prompt: not blank, at most the configured size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt(String);

impl Prompt {
    pub fn parse(s: String, max_bytes: usize) -> Result<Prompt> {
        if s.trim().is_empty() {
            return Err(Error::bad_request("prompt is empty"));
        }
        if s.len() > max_bytes {
            return Err(Error::payload_too_large(format!(
                "prompt is {} bytes; the limit is {max_bytes}",
                s.len()
            )));
        }
        if s.contains('\0') {
            return Err(Error::bad_request("prompt contains a NUL character"));
        }
        Ok(Prompt(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Seconds a turn or run may take: 1 up to the configured maximum.
pub fn timeout_secs(requested: Option<u64>, default: u64, max: u64) -> Result<u64> {
    match requested {
        None => Ok(default),
        Some(0) => Err(Error::bad_request("timeout_secs must be at least 1")),
        Some(t) if t > max => Err(Error::bad_request(format!(
            "timeout_secs {t} exceeds the maximum of {max}"
        ))),
        Some(t) => Ok(t),
    }
}

/// A value quoted in an error message, cut short.
/// Input quoted back in an error message, clipped.
fn clip(s: &str) -> String {
    crate::error::clip(s, 80)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn session_ids() {
        let id = SessionId::new();
        assert_eq!(SessionId::parse(&id.as_string()).unwrap(), id);
        let upper = id.as_string().to_uppercase();
        assert_eq!(
            SessionId::parse(&upper).unwrap(),
            id,
            "upper case is the same id"
        );
        let braced = format!("{{{}}}", id.as_string());
        let urn = format!("urn:uuid:{}", id.as_string());
        let simple = id.as_string().replace('-', "");
        for bad in [
            "",
            "abc",
            "../etc",
            "00000000-0000-0000-0000-00000000000g",
            &braced,
            &urn,
            &simple,
        ] {
            assert_eq!(
                SessionId::parse(bad).unwrap_err().kind,
                ErrorKind::BadRequest
            );
        }
    }

    #[test]
    fn run_ids() {
        let id = RunId::new();
        assert_eq!(RunId::parse(&id.as_string()).unwrap(), id);
        assert_eq!(RunId::parse("x").unwrap_err().kind, ErrorKind::BadRequest);
    }

    #[test]
    fn models() {
        for ok in [
            "sonnet",
            "claude-sonnet-4-5-20250929",
            "claude-opus-4-6[1m]",
            "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
            "claude-3-5-sonnet@20240620",
        ] {
            assert_eq!(Model::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "-p", "--help", "a b", "x;y", "ä", &"m".repeat(201)] {
            assert_eq!(
                Model::parse(bad).unwrap_err().kind,
                ErrorKind::BadRequest,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn file_names() {
        for ok in ["notes.md", "a", "x.y.z", "with space.txt", ".hidden"] {
            assert!(FileName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/etc/passwd",
            "a\\b",
            "x..y",
            "a\0b",
            "a\nb",
            ".acpxrc.json",
        ] {
            assert_eq!(
                FileName::parse(bad).unwrap_err().kind,
                ErrorKind::BadRequest,
                "{bad:?}"
            );
        }
        assert!(FileName::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn app_names() {
        assert!(AppName::parse("photo-app_1.0").is_ok());
        for bad in ["", "a b", "ä", &"x".repeat(65)] {
            assert!(AppName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prompts() {
        assert!(Prompt::parse("hi".into(), 10).is_ok());
        assert_eq!(
            Prompt::parse("  \n".into(), 10).unwrap_err().kind,
            ErrorKind::BadRequest
        );
        assert_eq!(
            Prompt::parse("x".repeat(11), 10).unwrap_err().kind,
            ErrorKind::PayloadTooLarge
        );
    }

    #[test]
    fn timeouts() {
        assert_eq!(timeout_secs(None, 120, 600).unwrap(), 120);
        assert_eq!(timeout_secs(Some(5), 120, 600).unwrap(), 5);
        assert!(timeout_secs(Some(0), 120, 600).is_err());
        assert!(timeout_secs(Some(601), 120, 600).is_err());
    }
}
