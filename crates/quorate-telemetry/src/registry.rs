//! A small metrics registry behind the `metrics` facade, rendered in the Prometheus text
//! exposition format (version 0.0.4).
//!
//! Why not `metrics-exporter-prometheus`: with its default features off it still brings a
//! second `hashbrown`, `base64` and `rand` into the tree; the node needs counters, gauges and
//! fixed-bucket histograms, which fit in this file. Every series is an atomic; recording
//! takes no lock. The number of series is bounded ([`SERIES_MAX`]): past it, new series are
//! not recorded and [`Metrics::series_dropped`] counts them.

use crate::names::{self, Kind};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// The most series (name and label set) one registry holds.
pub const SERIES_MAX: usize = 10_000;
/// The longest help text kept per metric (bytes).
const HELP_BYTES_MAX: usize = 512;

/// Identity of one series: the name and its labels sorted by key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesKey {
    name: String,
    labels: Vec<(String, String)>,
}

impl SeriesKey {
    fn from_key(key: &Key) -> SeriesKey {
        let mut labels: Vec<(String, String)> =
            key.labels().map(|l| (l.key().to_string(), l.value().to_string())).collect();
        labels.sort();
        SeriesKey { name: key.name().to_string(), labels }
    }
}

/// A fixed-bucket histogram.
#[derive(Debug)]
struct Buckets {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_bits: AtomicU64,
}

impl Buckets {
    fn new(bounds: &'static [f64]) -> Buckets {
        Buckets {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }
}

impl metrics::HistogramFn for Buckets {
    fn record(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + value).to_bits()));
    }
}

#[derive(Debug, Default)]
struct Series {
    counters: BTreeMap<SeriesKey, Arc<AtomicU64>>,
    gauges: BTreeMap<SeriesKey, Arc<AtomicU64>>,
    histograms: BTreeMap<SeriesKey, Arc<Buckets>>,
    help: BTreeMap<String, String>,
    dropped: u64,
}

impl Series {
    fn len(&self) -> usize {
        self.counters.len() + self.gauges.len() + self.histograms.len()
    }
}

/// A metrics registry: install it as the `metrics` facade's recorder, record through the
/// facade (`metrics::counter!(names::TERM)`…), render with [`Metrics::render`]. Cloning is
/// cheap and shares the registry.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Series>>,
    /// Whether [`Metrics::render`] adds the process metrics ([`crate::process`]).
    process: bool,
}

static GLOBAL: OnceLock<Option<Metrics>> = OnceLock::new();

impl Metrics {
    /// A new, empty registry that knows the help text of every metric in [`names::ALL`].
    pub fn new() -> Metrics {
        let m = Metrics::default();
        {
            let mut s = m.lock();
            for d in names::ALL {
                s.help.insert(d.name.to_string(), d.help.to_string());
            }
        }
        m
    }

    /// This registry, rendering the process metrics of [`crate::process`] (read from
    /// `/proc/self` at each render) before its own series. The global registry does.
    #[must_use]
    pub fn with_process_metrics(mut self) -> Metrics {
        self.process = true;
        self
    }

    /// The process-wide registry, installed as the `metrics` facade's global recorder on
    /// first use. Later calls return the same registry.
    ///
    /// # Errors
    /// [`crate::TelemetryError::RecorderInstalled`] when another recorder was installed
    /// first.
    pub fn global() -> Result<Metrics, crate::TelemetryError> {
        GLOBAL
            .get_or_init(|| {
                let m = Metrics::new().with_process_metrics();
                metrics::set_global_recorder(m.clone()).ok().map(|()| m)
            })
            .clone()
            .ok_or(crate::TelemetryError::RecorderInstalled)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Series not recorded because the registry held [`SERIES_MAX`] already.
    pub fn series_dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Renders every series in the Prometheus text format, metrics sorted by name.
    pub fn render(&self) -> String {
        let process = self.process.then(crate::process::ProcessSample::read);
        let s = self.lock();
        let mut out = String::with_capacity(64 * s.len() + 256);
        // `process_*` sorts before `quorate_*`.
        if let Some(p) = process {
            p.render(&mut out);
        }
        let mut by_name: BTreeMap<&str, (Kind, Vec<&SeriesKey>)> = BTreeMap::new();
        for k in s.counters.keys() {
            by_name.entry(&k.name).or_insert((Kind::Counter, Vec::new())).1.push(k);
        }
        for k in s.gauges.keys() {
            by_name.entry(&k.name).or_insert((Kind::Gauge, Vec::new())).1.push(k);
        }
        for k in s.histograms.keys() {
            by_name.entry(&k.name).or_insert((Kind::Histogram, Vec::new())).1.push(k);
        }
        for (name, (kind, keys)) in by_name {
            if let Some(h) = s.help.get(name) {
                let _ = writeln!(out, "# HELP {name} {}", escape_help(h));
            }
            let ty = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# TYPE {name} {ty}");
            for k in keys {
                match kind {
                    Kind::Counter => {
                        if let Some(c) = s.counters.get(k) {
                            let _ = writeln!(out, "{name}{} {}", labels(&k.labels, None), c.load(Ordering::Relaxed));
                        }
                    }
                    Kind::Gauge => {
                        if let Some(g) = s.gauges.get(k) {
                            let v = f64::from_bits(g.load(Ordering::Relaxed));
                            let _ = writeln!(out, "{name}{} {}", labels(&k.labels, None), number(v));
                        }
                    }
                    Kind::Histogram => {
                        if let Some(h) = s.histograms.get(k) {
                            let mut cumulative = 0u64;
                            for (b, c) in h.bounds.iter().zip(&h.counts) {
                                cumulative += c.load(Ordering::Relaxed);
                                let le = number(*b);
                                let _ =
                                    writeln!(out, "{name}_bucket{} {cumulative}", labels(&k.labels, Some(("le", &le))));
                            }
                            let count = h.count.load(Ordering::Relaxed);
                            let l = labels(&k.labels, Some(("le", "+Inf")));
                            let _ = writeln!(out, "{name}_bucket{l} {count}");
                            let sum = f64::from_bits(h.sum_bits.load(Ordering::Relaxed));
                            let _ = writeln!(out, "{name}_sum{} {}", labels(&k.labels, None), number(sum));
                            let _ = writeln!(out, "{name}_count{} {count}", labels(&k.labels, None));
                        }
                    }
                }
            }
        }
        out
    }

    fn describe(&self, name: &KeyName, description: &SharedString) {
        let mut s = self.lock();
        if s.help.len() < SERIES_MAX && !s.help.contains_key(name.as_str()) {
            let mut h = description.to_string();
            if h.len() > HELP_BYTES_MAX {
                let mut cut = HELP_BYTES_MAX;
                while !h.is_char_boundary(cut) {
                    cut -= 1;
                }
                h.truncate(cut);
            }
            s.help.insert(name.as_str().to_string(), h);
        }
    }
}

fn buckets_for(name: &str) -> &'static [f64] {
    names::ALL
        .iter()
        .find(|d| d.name == name && d.kind == Kind::Histogram)
        .map_or(names::LATENCY_BUCKETS_SECONDS, |d| d.buckets())
}

impl Recorder for Metrics {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(&key, &description);
    }

    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(&key, &description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(&key, &description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        let k = SeriesKey::from_key(key);
        let mut s = self.lock();
        if let Some(c) = s.counters.get(&k) {
            return Counter::from_arc(c.clone());
        }
        if s.len() >= SERIES_MAX {
            s.dropped += 1;
            return Counter::noop();
        }
        let c = Arc::new(AtomicU64::new(0));
        s.counters.insert(k, c.clone());
        Counter::from_arc(c)
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        let k = SeriesKey::from_key(key);
        let mut s = self.lock();
        if let Some(g) = s.gauges.get(&k) {
            return Gauge::from_arc(g.clone());
        }
        if s.len() >= SERIES_MAX {
            s.dropped += 1;
            return Gauge::noop();
        }
        let g = Arc::new(AtomicU64::new(0f64.to_bits()));
        s.gauges.insert(k, g.clone());
        Gauge::from_arc(g)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        let k = SeriesKey::from_key(key);
        let mut s = self.lock();
        if let Some(h) = s.histograms.get(&k) {
            return Histogram::from_arc(h.clone());
        }
        if s.len() >= SERIES_MAX {
            s.dropped += 1;
            return Histogram::noop();
        }
        let h = Arc::new(Buckets::new(buckets_for(key.name())));
        s.histograms.insert(k, h.clone());
        Histogram::from_arc(h)
    }
}

fn labels(labels: &[(String, String)], extra: Option<(&str, &str)>) -> String {
    if labels.is_empty() && extra.is_none() {
        return String::new();
    }
    let mut out = String::from("{");
    let mut first = true;
    for (k, v) in labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(extra) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for ch in v.chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

fn escape_help(h: &str) -> String {
    h.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 9.007e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::new();
        metrics::with_local_recorder(&m, || {
            metrics::counter!(names::PROPOSALS_SHED_TOTAL, names::LABEL_REASON => "disk_space").increment(3);
            metrics::gauge!(names::TERM).set(7.0);
            metrics::gauge!(names::PEER_RTT_SECONDS, names::LABEL_PEER => "2").set(0.0015);
            metrics::histogram!(names::FSYNC_SECONDS).record(0.0007);
            metrics::histogram!(names::FSYNC_SECONDS).record(2.0);
        });
        let text = m.render();
        assert!(text.contains("# TYPE quorate_proposals_shed_total counter\n"), "{text}");
        assert!(text.contains("quorate_proposals_shed_total{reason=\"disk_space\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE quorate_raft_term gauge\nquorate_raft_term 7\n"), "{text}");
        assert!(text.contains("quorate_peer_rtt_seconds{peer=\"2\"} 0.0015\n"), "{text}");
        assert!(text.contains("# TYPE quorate_storage_fsync_seconds histogram\n"), "{text}");
        assert!(text.contains("quorate_storage_fsync_seconds_bucket{le=\"0.0005\"} 0\n"), "{text}");
        assert!(text.contains("quorate_storage_fsync_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("quorate_storage_fsync_seconds_bucket{le=\"5\"} 2\n"), "{text}");
        assert!(text.contains("quorate_storage_fsync_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("quorate_storage_fsync_seconds_count 2\n"), "{text}");
        assert!(text.contains("quorate_storage_fsync_seconds_sum 2.0007\n"), "{text}");
        assert!(text.contains("# HELP quorate_raft_term The node's current term.\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped_and_series_are_bounded() {
        let m = Metrics::new();
        metrics::with_local_recorder(&m, || {
            metrics::counter!(names::AUTH_REFUSALS_TOTAL, names::LABEL_REASON => "a\"b\\c\nd").increment(1);
            for i in 0..SERIES_MAX + 5 {
                metrics::gauge!("quorate_test_gauge", "i" => i.to_string()).set(1.0);
            }
        });
        let text = m.render();
        assert!(text.contains(r#"quorate_auth_refusals_total{reason="a\"b\\c\nd"} 1"#), "escaped label");
        assert_eq!(m.series_dropped(), 6);
    }
}
