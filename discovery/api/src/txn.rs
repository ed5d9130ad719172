//! `/v1/txn`: Consul's transactions over KV, applied all or nothing in one Raft entry.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::error::ApiError;
use crate::ApiState;
use crate::respond::{ApiResult, read_opts};
use catalog::command::{Command, Outcome, TxnOp, TxnVerb};
use catalog::model::MAX_KV_VALUE_BYTES;

/// Consul's limit on operations in one transaction.
pub const MAX_OPS: usize = 64;

fn field<'a>(m: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v).filter(|v| !v.is_null())
}

/// Reads a `/v1/txn` body into KV operations (pure). Errors name the operation.
pub fn decode(body: &[u8]) -> Result<Vec<TxnOp>, ApiError> {
    let raw: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("Failed to parse body: {e}")))?;
    let items = raw
        .as_array()
        .ok_or_else(|| ApiError::BadRequest("Failed to parse body: expected a list of operations".into()))?;
    if items.len() > MAX_OPS {
        return Err(ApiError::TooLarge(format!(
            "Transaction contains too many operations ({} > {MAX_OPS})",
            items.len()
        )));
    }
    let mut ops = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let bad = |why: String| ApiError::BadRequest(format!("Operation {i}: {why}"));
        let op = item.as_object().ok_or_else(|| bad("must be an object".into()))?;
        let kv = field(op, "KV")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("only KV operations are supported (\"KV\": {...})".into()))?;
        let text = |name: &str| field(kv, name).and_then(Value::as_str).unwrap_or_default().to_string();
        let uint = |name: &str| -> Result<u64, ApiError> {
            match field(kv, name) {
                None => Ok(0),
                Some(v) => v.as_u64().ok_or_else(|| bad(format!("{name} must be a non-negative integer"))),
            }
        };
        let verb_text = text("Verb");
        let verb = TxnVerb::parse(&verb_text).ok_or_else(|| bad(format!("unknown KV verb {verb_text:?}")))?;
        let key = text("Key");
        if key.is_empty() && !matches!(verb, TxnVerb::GetTree | TxnVerb::DeleteTree) {
            return Err(bad("Missing key name".into()));
        }
        let value = match field(kv, "Value") {
            None => Vec::new(),
            Some(Value::String(b64)) => STANDARD.decode(b64).map_err(|e| bad(format!("Value is not base64: {e}")))?,
            Some(other) => return Err(bad(format!("Value must be a base64 string, not {other}"))),
        };
        if value.len() > MAX_KV_VALUE_BYTES {
            return Err(bad(format!("Value too large: {} bytes, max size: {MAX_KV_VALUE_BYTES} bytes", value.len())));
        }
        let session = text("Session");
        if matches!(verb, TxnVerb::Lock | TxnVerb::Unlock | TxnVerb::CheckSession) && session.is_empty() {
            return Err(bad(format!("{verb_text} needs a Session")));
        }
        ops.push(TxnOp { verb, key, value, flags: uint("Flags")?, index: uint("Index")?, session });
    }
    Ok(ops)
}

pub async fn txn(State(st): State<ApiState>, RawQuery(raw): RawQuery, body: Bytes) -> ApiResult {
    read_opts(&st, &raw)?;
    let ops = decode(&body)?;
    let written = st.cluster.write(Command::Txn(ops)).await?;
    let json_body =
        |status: StatusCode, v: Value| (status, [("content-type", "application/json")], v.to_string()).into_response();
    Ok(match written.outcome {
        Outcome::Txn(entries) => {
            let results: Vec<Value> = entries.iter().map(|e| json!({"KV": super::views::kv_entry(e)})).collect();
            json_body(StatusCode::OK, json!({"Results": results, "Errors": null}))
        }
        Outcome::TxnFailed(errors) => {
            let errors: Vec<Value> = errors.iter().map(|(i, what)| json!({"OpIndex": i, "What": what})).collect();
            json_body(StatusCode::CONFLICT, json!({"Results": null, "Errors": errors}))
        }
        Outcome::Rejected(m) => return Err(ApiError::BadRequest(m)),
        other => return Err(ApiError::Internal(format!("unexpected transaction outcome {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_decode_with_consul_verbs() {
        let ops = decode(
            br#"[{"KV": {"Verb": "set", "Key": "a", "Value": "MQ==", "Flags": 3}},
                 {"KV": {"Verb": "check-index", "Key": "a", "Index": 7}},
                 {"kv": {"verb": "lock", "key": "l", "session": "s"}}]"#,
        )
        .expect("valid");
        assert_eq!(ops[0].value, b"1");
        assert_eq!((ops[0].flags, ops[1].index, ops[2].verb), (3, 7, TxnVerb::Lock));
    }

    #[test]
    fn bad_operations_name_their_index() {
        let e = decode(br#"[{"KV": {"Verb": "set", "Key": "a"}}, {"KV": {"Verb": "frob", "Key": "b"}}]"#)
            .expect_err("verb");
        assert!(e.to_string().contains("Operation 1") && e.to_string().contains("frob"), "{e}");
        let many = format!("[{}]", vec![r#"{"KV": {"Verb": "get", "Key": "a"}}"#; 65].join(","));
        let e = decode(many.as_bytes()).expect_err("too many");
        assert!(
            matches!(&e, ApiError::TooLarge(m) if m == "Transaction contains too many operations (65 > 64)"),
            "{e}"
        );
        let e = decode(br#"[{"KV": {"Verb": "lock", "Key": "a"}}]"#).expect_err("session");
        assert!(e.to_string().contains("needs a Session"), "{e}");
    }
}
