//! Attached files: decoded, checked against the limits, written into a directory, and listed
//! ahead of the prompt.

use std::path::{Path, PathBuf};

use base64::Engine;

use super::types::FileName;
use crate::error::{Error, Result};
use crate::wire::FileUpload;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: FileName,
    pub content: Vec<u8>,
}

/// Decodes uploads, refusing bad names, bad base64, duplicates and anything over the limits.
pub fn decode(files: &[FileUpload], max_files: usize, max_bytes: usize) -> Result<Vec<Attachment>> {
    if files.len() > max_files {
        return Err(Error::payload_too_large(format!(
            "{} files attached; the limit is {max_files}",
            files.len()
        )));
    }
    let mut total = 0usize;
    let mut out: Vec<Attachment> = Vec::with_capacity(files.len());
    for f in files {
        let name = FileName::parse(&f.name)?;
        if out.iter().any(|a| a.name == name) {
            return Err(Error::bad_request(format!(
                "file {:?} is attached twice",
                name.as_str()
            )));
        }
        // Decoded size is at most 3/4 of the encoded length: refuse early without decoding.
        if total + f.content_base64.len() / 4 * 3 > max_bytes + 3 {
            return Err(too_large(max_bytes));
        }
        let content = base64::engine::general_purpose::STANDARD
            .decode(f.content_base64.trim())
            .map_err(|e| {
                Error::bad_request(format!(
                    "file {:?}: content_base64 is not valid base64: {e}",
                    name.as_str()
                ))
            })?;
        total += content.len();
        if total > max_bytes {
            return Err(too_large(max_bytes));
        }
        out.push(Attachment { name, content });
    }
    Ok(out)
}

fn too_large(max_bytes: usize) -> Error {
    Error::payload_too_large(format!("attached files exceed {max_bytes} bytes in all"))
}

/// Writes the attachments into `dir`, replacing files of the same name; returns their paths.
pub async fn write(dir: &Path, files: Vec<Attachment>) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::with_capacity(files.len());
    for f in files {
        let path = dir.join(f.name.as_str());
        tokio::fs::write(&path, &f.content).await?;
        paths.push(path);
    }
    Ok(paths)
}

/// The prompt as the agent sees it: an `[Attached files]` header listing absolute paths, then
/// the prompt itself.
pub fn with_header(paths: &[String], prompt: &str) -> String {
    if paths.is_empty() {
        return prompt.to_string();
    }
    let mut out = String::from("[Attached files]\n");
    for p in paths {
        out.push_str("- ");
        out.push_str(p);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(prompt);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn up(name: &str, content: &[u8]) -> FileUpload {
        FileUpload {
            name: name.into(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(content),
        }
    }

    #[test]
    fn decodes_and_limits() {
        let files = decode(&[up("a.txt", b"hello"), up("b.bin", &[0, 1, 2])], 4, 100).unwrap();
        assert_eq!(files[0].content, b"hello");
        assert_eq!(files[1].name.as_str(), "b.bin");
        let kind = |r: Result<Vec<Attachment>>| r.unwrap_err().kind;
        assert_eq!(
            kind(decode(&vec![up("a", b"x"); 3], 2, 100)),
            ErrorKind::PayloadTooLarge
        );
        assert_eq!(
            kind(decode(&[up("a", &[7; 101])], 4, 100)),
            ErrorKind::PayloadTooLarge
        );
        assert_eq!(
            kind(decode(&[up("a", &[7; 60]), up("b", &[7; 60])], 4, 100)),
            ErrorKind::PayloadTooLarge
        );
        assert_eq!(
            kind(decode(&[up("../a", b"x")], 4, 100)),
            ErrorKind::BadRequest
        );
        assert_eq!(
            kind(decode(&[up("a", b"x"), up("a", b"y")], 4, 100)),
            ErrorKind::BadRequest
        );
        let bad = FileUpload {
            name: "a".into(),
            content_base64: "!!!".into(),
        };
        assert_eq!(kind(decode(&[bad], 4, 100)), ErrorKind::BadRequest);
    }

    #[test]
    fn header_lists_paths_ahead_of_prompt() {
        assert_eq!(with_header(&[], "hi"), "hi");
        assert_eq!(
            with_header(&["/s/a.md".into(), "/s/b.md".into()], "hi"),
            "[Attached files]\n- /s/a.md\n- /s/b.md\n\nhi"
        );
    }
}
