//! What the server logged, for tests that check a line was logged: a
//! minimal `tracing` subscriber ([`Capture`]) that keeps the message of each
//! INFO, WARN or ERROR event, from every thread (the server logs on its
//! worker threads, so it is the binary's global subscriber). This crate's
//! dev-dependencies have no subscriber crate.

use std::sync::Mutex;

use tracing::Level;

/// Each event's level and message, in the order logged.
static LOGGED: Mutex<Vec<(Level, String)>> = Mutex::new(Vec::new());

/// Keeps each event's message in [`LOGGED`] (set by [`capture`]).
struct Capture;

impl tracing::Subscriber for Capture {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        // More verbose levels compare greater.
        *meta.level() <= Level::INFO
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        LOGGED
            .lock()
            .unwrap()
            .push((*event.metadata().level(), message.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Makes [`Capture`] the binary's subscriber (the first call does; the
/// tests that read the log each call it, in any order).
pub fn capture() {
    let _ = tracing::subscriber::set_global_default(Capture);
}

/// The messages of the INFO, WARN and ERROR events logged so far.
pub fn logged() -> Vec<String> {
    at_least(Level::INFO)
}

/// The messages of the WARN and ERROR events logged so far.
pub fn warnings() -> Vec<String> {
    at_least(Level::WARN)
}

fn at_least(level: Level) -> Vec<String> {
    LOGGED
        .lock()
        .unwrap()
        .iter()
        .filter(|(l, _)| *l <= level)
        .map(|(_, m)| m.clone())
        .collect()
}
