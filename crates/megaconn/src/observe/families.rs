//! The metric families of one exposition, recorded from each server before
//! any is written, so that several servers' series share each family.
//!
//! Prometheus and OpenMetrics allow a family (its `# HELP` and `# TYPE`)
//! once per exposition: a second `# HELP megaconn_connections_open` fails
//! the scrape ("second HELP line for metric name", Prometheus, the
//! Pushgateway, `promtool`). `prometheus-client` writes a collector's
//! families as it is asked, one collector after the other, so two servers
//! registered as two collectors would repeat every name. So the series of
//! every server of one registry are recorded first (`metrics.rs` says what
//! they are, once per server), then each family is written once with each
//! server's series under its `server` label ([`Builder::name`](crate::Builder::name)).
//! An unnamed server alone writes exactly what it wrote before names
//! existed. Recording costs a few hundred small allocations a scrape.

use std::borrow::Cow;
use std::fmt;

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, LabelSetEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Every family's name starts with this (`megaconn_`), written here: the
/// collector sits in the application's registry itself, under its prefix.
const PREFIX: &str = "megaconn_";

/// A series' labels besides `server`.
pub(crate) type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// The families recorded so far, in the order first recorded.
#[derive(Default)]
pub(crate) struct Families<'a> {
    families: Vec<Family<'a>>,
    /// The server being recorded now (`None`: unnamed).
    server: Option<&'a str>,
}

struct Family<'a> {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
    series: Vec<Series<'a>>,
}

struct Series<'a> {
    server: Option<&'a str>,
    labels: Labels<'a>,
    value: Value,
}

enum Value {
    Gauge(i64),
    Counter(u64),
    Histogram {
        sum: f64,
        count: u64,
        buckets: Vec<(f64, u64)>,
    },
}

/// Where one server's series of one family go ([`Families::family`]).
pub(crate) struct FamilyOf<'f, 'a> {
    series: &'f mut Vec<Series<'a>>,
    server: Option<&'a str>,
}

impl<'a> Families<'a> {
    /// The series recorded from now on are `server`'s.
    pub(crate) fn server(&mut self, server: Option<&'a str>) {
        self.server = server;
    }

    /// The family `name` (without `megaconn_`), made on first use; a later
    /// server's series join the first server's.
    pub(crate) fn family(
        &mut self,
        name: &'static str,
        help: &'static str,
        unit: Option<&Unit>,
        kind: MetricType,
    ) -> FamilyOf<'_, 'a> {
        let at = match self.families.iter().position(|f| f.name == name) {
            Some(at) => at,
            None => {
                self.families.push(Family {
                    name,
                    help,
                    unit: unit.cloned(),
                    kind,
                    series: Vec::new(),
                });
                self.families.len() - 1
            }
        };
        FamilyOf {
            series: &mut self.families[at].series,
            server: self.server,
        }
    }

    /// A gauge of one series.
    pub(crate) fn gauge(&mut self, name: &'static str, help: &'static str, v: i64) {
        self.family(name, help, None, MetricType::Gauge)
            .gauge(Vec::new(), v);
    }

    /// A counter of one series.
    pub(crate) fn counter(&mut self, name: &'static str, help: &'static str, v: u64) {
        self.family(name, help, None, MetricType::Counter)
            .counter(Vec::new(), v);
    }

    /// A counter family with one label: a series per `(value, count)`.
    pub(crate) fn labelled<'v: 'a>(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        series: impl IntoIterator<Item = (&'v str, u64)>,
    ) {
        let mut family = self.family(name, help, None, MetricType::Counter);
        for (value, n) in series {
            family.counter(vec![(label, Cow::Borrowed(value))], n);
        }
    }

    /// Writes every family once, each server's series in it.
    pub(crate) fn write(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut name = String::new();
        for f in &self.families {
            name.clear();
            name.push_str(PREFIX);
            name.push_str(f.name);
            let mut m = e.encode_descriptor(&name, f.help, f.unit.as_ref(), f.kind)?;
            for s in &f.series {
                if s.server.is_none() && s.labels.is_empty() {
                    // Bare, as one unnamed server's always were (an empty
                    // label set would write `{}`).
                    s.value.write(&mut m)?;
                } else {
                    let labels = (ServerLabel(s.server), s.labels.as_slice());
                    s.value.write(&mut m.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

impl<'a> FamilyOf<'_, 'a> {
    /// A gauge series.
    pub(crate) fn gauge(&mut self, labels: Labels<'a>, v: i64) {
        self.push(labels, Value::Gauge(v));
    }

    /// A counter series.
    pub(crate) fn counter(&mut self, labels: Labels<'a>, v: u64) {
        self.push(labels, Value::Counter(v));
    }

    /// A histogram series: its sum, count and `(upper bound, count in this
    /// bucket alone)` buckets, not cumulative: prometheus-client adds them
    /// up as it writes them (pass `per_bucket()`).
    pub(crate) fn histogram(&mut self, sum: f64, count: u64, buckets: Vec<(f64, u64)>) {
        self.push(
            Vec::new(),
            Value::Histogram {
                sum,
                count,
                buckets,
            },
        );
    }

    fn push(&mut self, labels: Labels<'a>, value: Value) {
        self.series.push(Series {
            server: self.server,
            labels,
            value,
        });
    }
}

impl Value {
    fn write(&self, m: &mut MetricEncoder) -> Result<(), fmt::Error> {
        match self {
            Value::Gauge(v) => m.encode_gauge(v),
            Value::Counter(v) => m.encode_counter::<NoLabelSet, _, u64>(v, None),
            Value::Histogram {
                sum,
                count,
                buckets,
            } => m.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None),
        }
    }
}

/// `server="NAME"` first in a series' labels, or nothing for an unnamed
/// server.
struct ServerLabel<'a>(Option<&'a str>);

impl EncodeLabelSet for ServerLabel<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        match self.0 {
            Some(name) => EncodeLabel::encode(&("server", name), encoder.encode_label()),
            None => Ok(()),
        }
    }
}
