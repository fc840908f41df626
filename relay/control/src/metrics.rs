//! A Prometheus registry that is a value: each relay owns one, so two relays
//! in one test process keep separate figures.
//!
//! Handles ([`Counter`], [`Gauge`], [`Histogram`]) are cheap clones of
//! atomics: the packet path updates them without locks; only registering
//! and rendering take the registry's lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Label pairs of one series.
pub type Labels = Vec<(String, String)>;

/// A monotonically increasing count.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Raises the counter to `total` if that is higher (for counts kept
    /// elsewhere, e.g. by the kernel, and copied in at scrape time).
    pub fn set_total(&self, total: u64) {
        self.0.fetch_max(total, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge whose value is a float (seconds, ratios), stored as the bits of
/// an `f64`. NaN says "unknown" (Prometheus takes it as a value).
#[derive(Clone, Debug)]
pub struct FloatGauge(Arc<AtomicU64>);

impl Default for FloatGauge {
    fn default() -> Self {
        FloatGauge(Arc::new(AtomicU64::new(0f64.to_bits())))
    }
}

impl FloatGauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct HistogramInner {
    bounds: Vec<f64>,
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in nanounits, so it can be an integer atomic.
    sum_nanos: AtomicU64,
}

/// A distribution over fixed bucket bounds.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramInner>);

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Histogram(Arc::new(HistogramInner {
            bounds: bounds.to_vec(),
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let inner = &self.0;
        if let Some(i) = inner.bounds.iter().position(|b| v <= *b) {
            inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        inner.count.fetch_add(1, Ordering::Relaxed);
        inner
            .sum_nanos
            .fetch_add((v.max(0.0) * 1e9) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

/// Bucket bounds in seconds for latencies from 10 µs to 1 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Debug)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
    FloatGauge(FloatGauge),
    Histogram(Histogram),
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: &'static str,
    series: Vec<(Labels, Series)>,
}

/// The registry. Registering the same name and labels twice returns the
/// same series.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<Vec<Family>>,
}

fn labels_of(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    fn register(
        &self,
        name: &str,
        help: &str,
        kind: &'static str,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Series,
        pick: impl Fn(&Series) -> Option<Series>,
    ) -> Option<Series> {
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let labels = labels_of(labels);
        let index = match families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                families.push(Family {
                    name: name.to_string(),
                    help: help.to_string(),
                    kind,
                    series: Vec::new(),
                });
                families.len() - 1
            }
        };
        let family = &mut families[index];
        if family.kind != kind {
            return None;
        }
        if let Some((_, s)) = family.series.iter().find(|(l, _)| *l == labels) {
            return pick(s);
        }
        let series = make();
        let handle = pick(&series);
        family.series.push((labels, series));
        handle
    }

    /// The counter `name{labels}`; a name already used for another kind
    /// yields a detached counter (counted, never rendered) rather than a panic.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        let got = self.register(
            name,
            help,
            "counter",
            labels,
            || Series::Counter(Counter::default()),
            |s| match s {
                Series::Counter(c) => Some(Series::Counter(c.clone())),
                _ => None,
            },
        );
        match got {
            Some(Series::Counter(c)) => c,
            _ => Counter::default(),
        }
    }

    /// The gauge `name{labels}`.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        let got = self.register(
            name,
            help,
            "gauge",
            labels,
            || Series::Gauge(Gauge::default()),
            |s| match s {
                Series::Gauge(g) => Some(Series::Gauge(g.clone())),
                _ => None,
            },
        );
        match got {
            Some(Series::Gauge(g)) => g,
            _ => Gauge::default(),
        }
    }

    /// The float gauge `name{labels}` (a `gauge` family: one name holds
    /// either integer or float gauges; a clash yields a detached gauge).
    pub fn float_gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> FloatGauge {
        let got = self.register(
            name,
            help,
            "gauge",
            labels,
            || Series::FloatGauge(FloatGauge::default()),
            |s| match s {
                Series::FloatGauge(g) => Some(Series::FloatGauge(g.clone())),
                _ => None,
            },
        );
        match got {
            Some(Series::FloatGauge(g)) => g,
            _ => FloatGauge::default(),
        }
    }

    /// The histogram `name{labels}` with bucket upper `bounds` (ascending).
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
    ) -> Histogram {
        let got = self.register(
            name,
            help,
            "histogram",
            labels,
            || Series::Histogram(Histogram::new(bounds)),
            |s| match s {
                Series::Histogram(h) => Some(Series::Histogram(h.clone())),
                _ => None,
            },
        );
        match got {
            Some(Series::Histogram(h)) => h,
            _ => Histogram::new(bounds),
        }
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for f in families.iter() {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            for (labels, series) in &f.series {
                match series {
                    Series::Counter(c) => {
                        let _ =
                            writeln!(out, "{}{} {}", f.name, render_labels(labels, None), c.get());
                    }
                    Series::Gauge(g) => {
                        let _ =
                            writeln!(out, "{}{} {}", f.name, render_labels(labels, None), g.get());
                    }
                    Series::FloatGauge(g) => {
                        let _ = writeln!(
                            out,
                            "{}{} {}",
                            f.name,
                            render_labels(labels, None),
                            render_float(g.get())
                        );
                    }
                    Series::Histogram(h) => render_histogram(&mut out, &f.name, labels, h),
                }
            }
        }
        out
    }
}

fn render_histogram(out: &mut String, name: &str, labels: &Labels, h: &Histogram) {
    let inner = &h.0;
    let mut cumulative = 0u64;
    for (bound, bucket) in inner.bounds.iter().zip(&inner.buckets) {
        cumulative += bucket.load(Ordering::Relaxed);
        let le = format!("{bound}");
        let _ = writeln!(
            out,
            "{name}_bucket{} {cumulative}",
            render_labels(labels, Some(&le))
        );
    }
    let count = inner.count.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "{name}_bucket{} {count}",
        render_labels(labels, Some("+Inf"))
    );
    let sum = inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    let _ = writeln!(out, "{name}_sum{} {sum}", render_labels(labels, None));
    let _ = writeln!(out, "{name}_count{} {count}", render_labels(labels, None));
}

/// A float as the text format spells it (`NaN`, `+Inf`, `-Inf`, or the
/// shortest decimal that reads back the same).
fn render_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_value(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render() {
        let r = Registry::new();
        let opened = r.counter(
            "relay_flows_opened_total",
            "Flows opened.",
            &[("service", "web")],
        );
        opened.inc();
        opened.add(2);
        r.counter(
            "relay_flows_opened_total",
            "Flows opened.",
            &[("service", "web")],
        )
        .inc();
        let active = r.gauge("relay_flows_active", "Flows open now.", &[]);
        active.add(5);
        active.add(-2);
        let h = r.histogram(
            "relay_commit_seconds",
            "Commit latency.",
            &[],
            &[0.001, 0.01],
        );
        h.observe(0.0005);
        h.observe(0.005);
        h.observe(1.0);
        let text = r.render();
        assert!(
            text.contains("# TYPE relay_flows_opened_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("relay_flows_opened_total{service=\"web\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("relay_flows_active 3\n"), "{text}");
        assert!(
            text.contains("relay_commit_seconds_bucket{le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("relay_commit_seconds_bucket{le=\"0.01\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("relay_commit_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("relay_commit_seconds_count 3\n"), "{text}");
    }

    #[test]
    fn two_registries_are_independent() {
        let a = Registry::new();
        let b = Registry::new();
        a.counter("x_total", "x", &[]).inc();
        assert!(a.render().contains("x_total 1"));
        assert!(!b.render().contains("x_total"));
    }

    #[test]
    fn a_kind_clash_does_not_panic_or_render_twice() {
        let r = Registry::new();
        r.counter("y", "y", &[]).inc();
        r.gauge("y", "y", &[]).set(7);
        let text = r.render();
        assert_eq!(text.matches("# TYPE y").count(), 1);
        assert!(text.contains("y 1\n"));
    }

    #[test]
    fn float_gauges_render_as_floats() {
        let r = Registry::new();
        let rtt = r.float_gauge("rtt_seconds", "RTT.", &[("peer", "b")]);
        assert_eq!(rtt.get(), 0.0);
        rtt.set(0.000_25);
        r.float_gauge("rtt_seconds", "RTT.", &[("peer", "c")])
            .set(f64::NAN);
        let text = r.render();
        assert!(text.contains("# TYPE rtt_seconds gauge\n"), "{text}");
        assert!(text.contains("rtt_seconds{peer=\"b\"} 0.00025\n"), "{text}");
        assert!(text.contains("rtt_seconds{peer=\"c\"} NaN\n"), "{text}");
        // The same name and labels give the same series; an integer gauge
        // of the same name is detached, not rendered twice.
        assert_eq!(
            r.float_gauge("rtt_seconds", "RTT.", &[("peer", "b")]).get(),
            0.000_25
        );
        r.gauge("rtt_seconds", "RTT.", &[("peer", "b")]).set(9);
        assert_eq!(r.render().matches("rtt_seconds{peer=\"b\"}").count(), 1);
        assert_eq!(render_float(f64::INFINITY), "+Inf");
        assert_eq!(render_float(3.0), "3");
    }

    #[test]
    fn label_values_are_escaped() {
        let r = Registry::new();
        r.counter("z_total", "z", &[("why", "a \"quoted\"\nline\\")])
            .inc();
        assert!(
            r.render()
                .contains(r#"z_total{why="a \"quoted\"\nline\\"} 1"#)
        );
    }
}
