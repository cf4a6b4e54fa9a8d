//! A small Swagger 2.0 reader: method, path template and required parameters per operation.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// One operation of a Swagger 2.0 spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Upper-case HTTP method.
    pub method: String,
    /// Path template (with the spec's `basePath` prefix applied).
    pub path: String,
    /// `operationId`.
    pub operation_id: String,
    /// Required query parameter names.
    pub required_query: BTreeSet<String>,
    /// Every declared query parameter name.
    pub query: BTreeSet<String>,
    /// A required `in: body` parameter exists.
    pub body_required: bool,
    /// A required `in: formData` parameter exists.
    pub form_required: bool,
    /// The `required` fields of the body schema (resolved through `definitions`).
    pub body_fields_required: BTreeSet<String>,
}

/// Reads every operation of the Swagger 2.0 file at `path`.
///
/// # Panics
///
/// Panics when the file cannot be read or is not a Swagger 2.0 document (test support only).
pub fn read_operations(path: &Path) -> Vec<Operation> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert_eq!(
        doc["swagger"],
        "2.0",
        "{} is not a Swagger 2.0 document",
        path.display()
    );
    let base = doc["basePath"]
        .as_str()
        .unwrap_or("/")
        .trim_end_matches('/');
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().into_iter().flatten() {
        let shared: Vec<&Value> = item
            .get("parameters")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        for method in ["get", "post", "put", "delete", "patch"] {
            let Some(op) = item.get(method) else { continue };
            let mut params = shared.clone();
            params.extend(
                op.get("parameters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            );
            let required = |kind: &str| {
                params
                    .iter()
                    .filter(|p| p["in"] == kind && p["required"] == true)
                    .filter_map(|p| p["name"].as_str().map(str::to_string))
                    .collect::<BTreeSet<_>>()
            };
            out.push(Operation {
                method: method.to_uppercase(),
                path: format!("{base}{template}"),
                operation_id: op["operationId"].as_str().unwrap_or_default().to_string(),
                required_query: required("query"),
                query: params
                    .iter()
                    .filter(|p| p["in"] == "query")
                    .filter_map(|p| p["name"].as_str().map(str::to_string))
                    .collect(),
                body_required: !required("body").is_empty(),
                form_required: !required("formData").is_empty(),
                body_fields_required: params
                    .iter()
                    .filter(|p| p["in"] == "body")
                    .filter_map(|p| {
                        let schema = &p["schema"];
                        let schema = match schema["$ref"].as_str() {
                            Some(r) => &doc["definitions"][r.trim_start_matches("#/definitions/")],
                            None => schema,
                        };
                        schema["required"].as_array().cloned()
                    })
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            });
        }
    }
    out
}

/// Returns whether `path` matches the spec path `template` (each `{name}` stands for one
/// non-empty segment part), and how many segments matched literally.
pub fn match_template(template: &str, path: &str) -> Option<usize> {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    if t.len() != p.len() {
        return None;
    }
    let mut literal = 0;
    for (ts, ps) in t.iter().zip(&p) {
        match (ts.find('{'), ts.find('}')) {
            (Some(open), Some(close)) if open < close => {
                let (prefix, suffix) = (&ts[..open], &ts[close + 1..]);
                if ps.len() <= prefix.len() + suffix.len()
                    || !ps.starts_with(prefix)
                    || !ps.ends_with(suffix)
                {
                    return None;
                }
            }
            _ if ts == ps => literal += 1,
            _ => return None,
        }
    }
    Some(literal)
}
