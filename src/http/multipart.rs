//! multipart/form-data bodies of `POST /run` and `POST /sessions/{id}/turn`, for legacy callers
//! that upload files that way: text fields become JSON fields, file parts become `files`.

use axum::extract::multipart::{Multipart, MultipartError};
use axum::http::StatusCode;
use base64::Engine;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::Error;
use crate::wire::FileUpload;

/// The form of `POST /run`: the fields of the JSON request, and any number of file parts.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct RunForm {
    prompt: String,
    model: Option<String>,
    timeout_secs: Option<u64>,
    /// File parts, under any field name: each part's filename becomes `name`.
    #[schema(value_type = Vec<String>, format = Binary)]
    files: Vec<Vec<u8>>,
}

/// The form of `POST /sessions/{id}/turn`: the session comes from the path.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct TurnForm {
    prompt: String,
    timeout_secs: Option<u64>,
    /// File parts, under any field name: each part's filename becomes `name`.
    #[schema(value_type = Vec<String>, format = Binary)]
    files: Vec<Vec<u8>>,
}

/// Fields left out when empty, as a browser sends an unfilled input.
const OPTIONAL: [&str; 3] = ["model", "name", "timeout_secs"];

/// Whether a Content-Type names a multipart form.
pub fn is_form(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("multipart/form-data"))
}

/// Reads a form into the JSON object of the request. Text fields keep their names
/// (`timeout_secs` as a number when it reads as one), so that the worker judges them as it judges
/// JSON; file parts become `files`. A field given twice is `bad_request`.
pub async fn read_form(mut form: Multipart, limit: usize) -> Result<Map<String, Value>, Error> {
    let mut fields = Map::new();
    let mut files = Vec::new();
    while let Some(field) = form.next_field().await.map_err(|e| part_error(e, limit))? {
        let name = field.name().unwrap_or_default().to_string();
        let file_name = field.file_name().map(str::to_string);
        let content = field.bytes().await.map_err(|e| part_error(e, limit))?;
        if let Some(file_name) = file_name {
            // A browser sends an unfilled file input as an empty part with an empty filename.
            if file_name.is_empty() && content.is_empty() {
                continue;
            }
            files.push(FileUpload {
                name: file_name,
                content_base64: base64::engine::general_purpose::STANDARD.encode(&content),
            });
            continue;
        }
        if name.is_empty() {
            return Err(Error::bad_request("a multipart field has no name"));
        }
        if name == "files" {
            return Err(Error::bad_request(
                "files are sent as file parts (with a filename), not as a text field",
            ));
        }
        let text = String::from_utf8(content.to_vec())
            .map_err(|_| Error::bad_request(format!("multipart field {name} is not UTF-8")))?;
        if text.is_empty() && OPTIONAL.contains(&name.as_str()) {
            continue;
        }
        let value = match (name.as_str(), text.trim().parse::<u64>()) {
            ("timeout_secs", Ok(n)) => Value::from(n),
            _ => Value::String(text),
        };
        if fields.insert(name.clone(), value).is_some() {
            return Err(Error::bad_request(format!(
                "multipart field {name} is given twice"
            )));
        }
    }
    if !files.is_empty() {
        fields.insert(
            "files".into(),
            serde_json::to_value(files).expect("files serialize"),
        );
    }
    Ok(fields)
}

fn part_error(err: MultipartError, limit: usize) -> Error {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        super::body_too_large(limit)
    } else {
        Error::bad_request(format!("invalid multipart body: {}", err.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_content_types() {
        assert!(is_form(Some("multipart/form-data; boundary=x")));
        assert!(is_form(Some("Multipart/Form-Data")));
        assert!(!is_form(Some("application/json")));
        assert!(!is_form(Some("multipart/mixed; boundary=x")));
        assert!(!is_form(None));
    }
}
