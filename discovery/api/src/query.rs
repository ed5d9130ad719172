//! Query-string handling with Consul's rules: flags by presence (`?recurse`, `?passing`),
//! repeated keys (`?tag=a&tag=b`), and the blocking-query options (`?index`, `?wait`,
//! `?stale`, `?consistent`).

use std::time::Duration;

use crate::error::ApiError;
use catalog::duration::parse_go_duration;

/// Consul's default and maximum blocking wait.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
pub const MAX_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub fn parse(raw: Option<&str>) -> Params {
        let pairs = raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        Params { pairs }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<String> {
        self.pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
    }

    /// A flag: absent is false; present with no value or a true value is true.
    pub fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "" | "1" | "t" | "true" => Ok(true),
                "0" | "f" | "false" => Ok(false),
                _ => Err(ApiError::BadRequest(format!("Invalid value for ?{key}: {v:?} (use true or false)"))),
            },
        }
    }

    /// An unsigned integer parameter; `what` names it in the error.
    pub fn uint(&self, key: &str, what: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ApiError::BadRequest(format!("Invalid {what}: {v:?} is not a non-negative integer"))),
        }
    }
}

/// The blocking and consistency options of a read.
#[derive(Debug, Clone, Copy)]
pub struct QueryOptions {
    /// 0 = do not block.
    pub index: u64,
    pub wait: Duration,
    pub consistent: bool,
    pub stale: bool,
}

impl QueryOptions {
    pub fn from_params(p: &Params) -> Result<QueryOptions, ApiError> {
        let index = p.uint("index", "index")?.unwrap_or(0);
        let wait = match p.get("wait") {
            None | Some("") => DEFAULT_WAIT,
            Some(w) => {
                parse_go_duration(w, true).map_err(|e| ApiError::BadRequest(format!("Invalid wait time: {e}")))?
            }
        };
        let wait = if wait.is_zero() { DEFAULT_WAIT } else { wait.min(MAX_WAIT) };
        let consistent = p.flag("consistent")?;
        let stale = p.flag("stale")?;
        if consistent && stale {
            return Err(ApiError::BadRequest("Cannot specify ?stale with ?consistent, conflicting semantics.".into()));
        }
        Ok(QueryOptions { index, wait, consistent, stale })
    }

    /// The wait plus Consul's random jitter of up to wait/16.
    pub fn wait_with_jitter(&self) -> Duration {
        let max_jitter = self.wait.as_millis() as u64 / 16;
        let jitter = if max_jitter == 0 { 0 } else { rand::random::<u64>() % max_jitter };
        self.wait + Duration::from_millis(jitter)
    }

    pub fn consistency(&self) -> &'static str {
        if self.consistent {
            "consistent"
        } else if self.stale {
            "stale"
        } else {
            "leader"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_by_presence() {
        let p = Params::parse(Some("recurse&passing=false&keys=True&tag=a&tag=b"));
        assert!(p.flag("recurse").expect("ok"));
        assert!(!p.flag("passing").expect("ok"));
        assert!(p.flag("keys").expect("ok"));
        assert!(!p.flag("raw").expect("ok"));
        assert_eq!(p.all("tag"), vec!["a", "b"]);
        assert!(Params::parse(Some("passing=maybe")).flag("passing").is_err());
    }

    #[test]
    fn blocking_options() {
        let q = QueryOptions::from_params(&Params::parse(Some("index=5&wait=20m"))).expect("ok");
        assert_eq!((q.index, q.wait), (5, MAX_WAIT));
        let q = QueryOptions::from_params(&Params::parse(None)).expect("ok");
        assert_eq!((q.index, q.wait), (0, DEFAULT_WAIT));
        assert!(q.wait_with_jitter() <= DEFAULT_WAIT + DEFAULT_WAIT / 16);
        let err = QueryOptions::from_params(&Params::parse(Some("index=abc"))).expect_err("bad");
        assert!(err.to_string().contains("Invalid index"));
        assert!(QueryOptions::from_params(&Params::parse(Some("wait=soon"))).is_err());
        assert!(QueryOptions::from_params(&Params::parse(Some("stale&consistent"))).is_err());
    }
}
