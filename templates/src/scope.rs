//! What one render carries besides the template: the options it reads (clock,
//! environment, parameters) and the per-render [`Scope`] shared by the engine and the
//! template functions. Both the engine and the function set depend on this module, never on
//! each other's internals.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use gotmpl::Value;

use crate::data::{Dependency, TemplateData};

/// Looks up an environment variable (`env`, `envOrDefault`).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Everything a render reads besides the catalog.
#[derive(Clone)]
pub struct RenderOptions {
    /// The instant `timestamp` shows.
    pub now: SystemTime,
    /// The environment `env` reads.
    pub env: EnvLookup,
    /// Values for `.` (consul-template passes none; wharf's built-in templates read their
    /// settings such as `.Listen` here).
    pub params: BTreeMap<String, String>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            now: SystemTime::now(),
            env: Arc::new(|k: &str| std::env::var(k).ok()),
            params: BTreeMap::new(),
        }
    }
}

/// Per-render state shared with the template functions.
pub(crate) struct Scope {
    pub data: Option<Arc<dyn TemplateData>>,
    pub used: BTreeSet<Dependency>,
    pub missing: BTreeSet<Dependency>,
    pub scratch: BTreeMap<String, Value>,
    pub regexes: HashMap<String, regex::Regex>,
    /// Byte offset of the action being executed.
    pub at: usize,
    pub now: SystemTime,
    pub env: EnvLookup,
}

impl Scope {
    pub(crate) fn new() -> Self {
        let defaults = RenderOptions::default();
        Scope {
            data: None,
            used: BTreeSet::new(),
            missing: BTreeSet::new(),
            scratch: BTreeMap::new(),
            regexes: HashMap::new(),
            at: 0,
            now: defaults.now,
            env: defaults.env,
        }
    }
}

pub(crate) type SharedScope = Arc<Mutex<Scope>>;

pub(crate) fn lock(scope: &SharedScope) -> MutexGuard<'_, Scope> {
    scope.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The function that records the position of the action about to run.
pub(crate) const AT_FUNC: &str = "__wharf_at";
/// Receiver-first form of the `Contains` method of consul-template's `ServiceTags`.
pub(crate) const CONTAINS_METHOD: &str = "__wharf_method_Contains";
