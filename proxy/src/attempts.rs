//! One request's attempts at its route's instances, and the rules both proxy paths follow:
//! which instance is next, when a failed request is tried again, what counts as an
//! instance's failure (passive ejection), and the 5xx rule.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::balance::{InflightGuard, Upstream};
use crate::route_table::Route;

/// Timeouts, retries and ejection, with their units.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long an idle upstream keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// Idle time allowed on a client keep-alive connection.
    pub client_keepalive: Duration,
    /// Extra attempts on another instance after an upstream timeout, for idempotent requests
    /// (connection failures before sending are always retried, and an idempotent request whose
    /// connection closed without an answer is tried on every other instance).
    pub retries: usize,
    /// Consecutive failures that eject an instance (0 = never).
    pub eject_after: u32,
    pub eject_for: Duration,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            client_keepalive: Duration::from_secs(60),
            retries: 2,
            eject_after: 5,
            eject_for: Duration::from_secs(10),
        }
    }
}

/// How a request that failed after it was sent may be tried again.
#[derive(Debug, PartialEq)]
pub(crate) enum Retry {
    No,
    /// On another instance, outside the budget.
    Free,
    /// On another instance, using one of `retries`.
    Budgeted,
}

impl UpstreamSettings {
    /// The rule both paths follow once a request is out: only idempotent requests are tried
    /// again, and only on an instance not tried yet. One whose connection closed or reset without
    /// an answer (a stopping instance, or Docker's port proxy in front of a dead container) is
    /// tried on every other instance, like nginx's `proxy_next_upstream error`; anything else,
    /// timeouts above all, which are costly, uses the retry budget.
    pub(crate) fn retry_after_send(
        &self,
        idempotent: bool,
        closed_without_answer: bool,
        retries_used: usize,
        untried: bool,
    ) -> Retry {
        if !idempotent || !untried {
            Retry::No
        } else if closed_without_answer {
            Retry::Free
        } else if retries_used < self.retries {
            Retry::Budgeted
        } else {
            Retry::No
        }
    }
}

/// Whether an instance's answer counts against it: a 5xx other than 501 (which says the
/// method is not implemented, not that the instance is sick).
pub(crate) fn is_failure_status(status: u16) -> bool {
    status >= 500 && status != 501
}

/// Counts an upstream failure against an instance and ejects it after too many in a row.
pub(crate) fn note_failure(settings: &UpstreamSettings, route: &Route, up: &Upstream) {
    route.service_stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
    if up.state.record_failure(settings.eject_after, settings.eject_for.as_millis() as u64) {
        route.service_stats.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(service = %route.service, instance = %up.id, addr = %up.addr,
            "instance ejected for {:?} after {} consecutive failures", settings.eject_for, settings.eject_after);
    }
}

/// One request's attempts: the instances tried, the retry budget used, the instance of the
/// attempt under way (counted in flight until the next attempt or the end).
#[derive(Default)]
pub(crate) struct Attempts {
    pub tried: Vec<SocketAddr>,
    pub retries_used: usize,
    pub current: Option<Arc<Upstream>>,
    inflight: Option<InflightGuard>,
}

impl Attempts {
    /// Picks the next instance not tried yet (`None` when every one was).
    pub fn next(&mut self, route: &Route, hash_key: Option<&[u8]>) -> Option<Arc<Upstream>> {
        let up = route.pool.select(hash_key, &self.tried)?;
        self.tried.push(up.addr);
        self.begin(up.clone());
        Some(up)
    }

    /// Starts an attempt on `up` (again, for a fresh connection to the same instance).
    pub fn begin(&mut self, up: Arc<Upstream>) {
        self.inflight = Some(InflightGuard::new(up.state.clone()));
        self.current = Some(up);
    }

    pub fn has_untried(&self, route: &Route) -> bool {
        route.pool.has_untried(&self.tried)
    }

    /// The current instance failed (connect, send, read, or a bad answer).
    pub fn failed(&self, settings: &UpstreamSettings, route: &Route) {
        if let Some(up) = &self.current {
            note_failure(settings, route, up);
        }
    }

    /// The current instance answered with `status`: the 5xx rule decides its health.
    pub fn answered(&self, settings: &UpstreamSettings, route: &Route, status: u16) {
        if let Some(up) = &self.current {
            if is_failure_status(status) {
                note_failure(settings, route, up);
            } else {
                up.state.record_success();
            }
        }
    }

    /// Whether to try again after the request was sent and no answer came, spending the
    /// budget when the rule says so; counts the retry in the service's stats.
    pub fn retry_after_send(
        &mut self,
        settings: &UpstreamSettings,
        route: &Route,
        idempotent: bool,
        closed_without_answer: bool,
    ) -> bool {
        let untried = self.has_untried(route);
        let again = match settings.retry_after_send(idempotent, closed_without_answer, self.retries_used, untried) {
            Retry::No => false,
            Retry::Free => true,
            Retry::Budgeted => {
                self.retries_used += 1;
                true
            }
        };
        if again {
            count_retry(route);
        }
        again
    }

    /// The request is over: the last instance is no longer in flight.
    pub fn finish(&mut self) {
        self.inflight = None;
    }
}

/// Counts one retry in the route's service stats.
pub(crate) fn count_retry(route: &Route) {
    route.service_stats.retries.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_after_send_follow_one_rule() {
        let s = UpstreamSettings { retries: 1, ..Default::default() };
        // Never for a non-idempotent request, nor with no instance left.
        assert_eq!(s.retry_after_send(false, true, 0, true), Retry::No);
        assert_eq!(s.retry_after_send(true, true, 0, false), Retry::No);
        // Closed without an answer: every other instance, outside the budget.
        assert_eq!(s.retry_after_send(true, true, 5, true), Retry::Free);
        // Timeouts: within the budget only.
        assert_eq!(s.retry_after_send(true, false, 0, true), Retry::Budgeted);
        assert_eq!(s.retry_after_send(true, false, 1, true), Retry::No);
    }

    #[test]
    fn only_5xx_other_than_501_count_against_an_instance() {
        assert!(is_failure_status(500) && is_failure_status(502) && is_failure_status(503));
        assert!(!is_failure_status(501) && !is_failure_status(404) && !is_failure_status(200));
    }
}
