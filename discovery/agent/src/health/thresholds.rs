//! Consul's check status handler, pure: SuccessBeforePassing, FailuresBeforeWarning and
//! FailuresBeforeCritical turn a stream of probe results into the status to record.
//! As in Consul, a warning result counts as a success for the counters.

use catalog::model::{CheckDefinition, CheckStatus};

#[derive(Clone, Debug)]
pub struct Thresholds {
    success_before_passing: u32,
    failures_before_warning: u32,
    failures_before_critical: u32,
    successes: u32,
    failures: u32,
}

impl Thresholds {
    pub fn new(def: &CheckDefinition) -> Thresholds {
        let critical = def.failures_before_critical;
        // Consul: FailuresBeforeWarning defaults to FailuresBeforeCritical.
        let warning =
            if def.failures_before_warning == 0 { critical } else { def.failures_before_warning.min(critical.max(1)) };
        Thresholds {
            success_before_passing: def.success_before_passing,
            failures_before_warning: warning,
            failures_before_critical: critical,
            successes: 0,
            failures: 0,
        }
    }

    /// Feeds one probe result; returns the status to record, or `None` to keep the
    /// current one (a threshold is not reached yet).
    pub fn observe(&mut self, result: CheckStatus) -> Option<CheckStatus> {
        match result {
            CheckStatus::Passing | CheckStatus::Warning => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                (self.successes >= self.success_before_passing).then_some(result)
            }
            CheckStatus::Critical => {
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
                if self.failures >= self.failures_before_critical {
                    Some(CheckStatus::Critical)
                } else if self.failures >= self.failures_before_warning {
                    Some(CheckStatus::Warning)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckStatus::*;

    fn th(s: u32, w: u32, c: u32) -> Thresholds {
        Thresholds::new(&CheckDefinition {
            success_before_passing: s,
            failures_before_warning: w,
            failures_before_critical: c,
            ..Default::default()
        })
    }

    #[test]
    fn defaults_are_immediate() {
        let mut t = th(0, 0, 0);
        assert_eq!(t.observe(Passing), Some(Passing));
        assert_eq!(t.observe(Critical), Some(Critical));
        assert_eq!(t.observe(Warning), Some(Warning));
    }

    #[test]
    fn success_before_passing() {
        let mut t = th(3, 0, 0);
        assert_eq!(t.observe(Passing), None);
        assert_eq!(t.observe(Passing), None);
        assert_eq!(t.observe(Passing), Some(Passing));
        assert_eq!(t.observe(Critical), Some(Critical));
        assert_eq!(t.observe(Passing), None, "the counter starts over after a failure");
    }

    #[test]
    fn failures_before_warning_then_critical() {
        let mut t = th(0, 2, 4);
        assert_eq!(t.observe(Critical), None);
        assert_eq!(t.observe(Critical), Some(Warning));
        assert_eq!(t.observe(Critical), Some(Warning));
        assert_eq!(t.observe(Critical), Some(Critical));
        assert_eq!(t.observe(Passing), Some(Passing));
        assert_eq!(t.observe(Critical), None, "failures start over after a success");
    }

    #[test]
    fn warning_defaults_to_critical_threshold() {
        let mut t = th(0, 0, 3);
        assert_eq!(t.observe(Critical), None);
        assert_eq!(t.observe(Critical), None);
        assert_eq!(t.observe(Critical), Some(Critical));
    }
}
