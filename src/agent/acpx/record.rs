//! acpx's on-disk records of sessions, and the files it reads from a session's directory.

use std::path::Path;

/// Removes acpx's on-disk record of a closed session (`<home>/.acpx/sessions/<id>.json` and
/// its event log, in the home of the session's app). acpx itself can only prune all closed
/// sessions of an agent at once.
pub(super) fn delete_record(home: &Path, record_id: &str) -> std::io::Result<usize> {
    let dir = home.join(".acpx/sessions");
    let name = encode_uri_component(record_id);
    let stream_prefix = format!("{name}.stream.");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if file == format!("{name}.json") || file.starts_with(&stream_prefix) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether acpx reads a file of this name from a session's working directory (its
/// per-directory config, `.acpxrc*`).
pub(in crate::agent) fn reads_from_cwd(name: &str) -> bool {
    name.starts_with(".acpxrc")
}

/// JavaScript's `encodeURIComponent`, which acpx uses for its record file names.
fn encode_uri_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_file_names_are_uri_encoded() {
        assert_eq!(encode_uri_component("test-1_a.b"), "test-1_a.b");
        assert_eq!(encode_uri_component("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_uri_component("ü"), "%C3%BC");
    }
}
