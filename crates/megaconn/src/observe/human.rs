//! Values as log lines show them to an operator: a setting that may be off
//! (`Option<Duration>`) reads `1s` or `none`, not the `Some(1s)` of its
//! `Debug`, which log fields printed with `?` used to show.

use std::fmt;
use std::time::Duration;

/// A timeout setting for a log field (`%Timeout(config.idle_timeout)`):
/// `1s`, `250ms`, `1.5s` (the units a config file is written in), `none`
/// when it is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeout(pub(crate) Option<Duration>);

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            // `Duration`'s own `Debug` is the human one (`1s`, `1.5s`,
            // `250ms`); only the `Some(…)` around it is not.
            Some(d) => write!(f, "{d:?}"),
            None => f.write_str("none"),
        }
    }
}

impl From<Duration> for Timeout {
    fn from(d: Duration) -> Timeout {
        Timeout(Some(d))
    }
}

impl From<Option<Duration>> for Timeout {
    fn from(d: Option<Duration>) -> Timeout {
        Timeout(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_reads_as_a_config_file_writes_it() {
        let shown = |d: Option<Duration>| Timeout(d).to_string();
        assert_eq!(shown(Some(Duration::from_secs(1))), "1s");
        assert_eq!(shown(Some(Duration::from_millis(1500))), "1.5s");
        assert_eq!(shown(Some(Duration::from_millis(250))), "250ms");
        assert_eq!(shown(None), "none");
    }
}
