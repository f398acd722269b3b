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

/// An error for a log field with its causes (`%Causes(&e)`): `error reading
/// a body from connection: unexpected end of file`, where `%e` prints only
/// the outermost message. hyper's and h2's errors keep what went wrong in
/// `source()` ("error reading a body from connection" says nothing of an
/// upstream that closed early); a message repeated by its cause is printed
/// once.
pub(crate) struct Causes<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            let message = cause.to_string();
            // Some errors print their source in their own message too.
            if !last.contains(&message) {
                write!(f, ": {message}")?;
            }
            last = message;
            next = cause.source();
        }
        Ok(())
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

    #[derive(Debug, thiserror::Error)]
    #[error("error reading a body from connection")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("request failed: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn an_errors_causes_are_printed_after_it() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "unexpected end of file",
        ));
        assert_eq!(
            Causes(&e).to_string(),
            "error reading a body from connection: unexpected end of file"
        );
    }

    #[test]
    fn a_cause_the_message_already_says_is_printed_once() {
        let e = Repeats(std::io::Error::other("connection reset"));
        assert_eq!(Causes(&e).to_string(), "request failed: connection reset");
    }
}
