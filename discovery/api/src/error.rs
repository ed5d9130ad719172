//! The API's errors and their one place of mapping to HTTP, Consul-style: plain-text
//! one-line bodies, 400 for bad input, 403 for ACLs, 404 for unknown IDs, 500 otherwise.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use catalog::ClusterError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
    /// 413: a request over one of Consul's size limits.
    #[error("{0}")]
    TooLarge(String),
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        };
        let mut body = self.to_string().replace('\n', " ");
        body.push('\n');
        (status, [("content-type", "text/plain; charset=utf-8")], body).into_response()
    }
}
