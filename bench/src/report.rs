//! Results: merged histograms, the JSON a machine reads, the table and Markdown a person reads,
//! and an SVG plot of the latency distributions.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub fn new_hist() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Adds every worker's histogram into one.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut all = new_hist();
    for h in parts {
        all.add(h).expect("histograms share bounds");
    }
    all
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Floors {
    /// A 4 KiB append + fdatasync (the file grows): the ratios are taken against this one.
    pub fdatasync_us: f64,
    /// A 4 KiB overwrite of synced blocks + fdatasync: the device's pure data sync.
    #[serde(default)]
    pub overwrite_fdatasync_us: f64,
    pub loopback_rtt_us: f64,
}

/// One workload's result; `make bench` writes a list of these.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub name: String,
    pub workload: String,
    pub durability: String,
    pub connections: usize,
    pub pipeline: usize,
    /// "closed" or "open" (with `rate_ops_s`).
    pub mode: String,
    pub rate_ops_s: Option<f64>,
    pub key_dist: String,
    /// `--key-prefix`: every key in one prefix; absent: keys spread over the key space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    pub keys: u64,
    pub value_size: usize,
    pub duration_s: f64,
    pub ops: u64,
    pub errors: BTreeMap<String, u64>,
    pub throughput_ops_s: f64,
    pub latency_us: Latency,
    pub floors: Floors,
    /// (percentile, µs) pairs for plots.
    pub distribution: Vec<(f64, u64)>,
}

pub fn latency(h: &Histogram<u64>) -> Latency {
    Latency {
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0]
        .iter()
        .map(|p| (*p, if *p >= 100.0 { h.max() } else { h.value_at_percentile(*p) }))
        .collect()
}

fn ratio(v: u64, floor: f64) -> String {
    if floor.is_finite() && floor > 0.0 {
        format!("{:.1}x", v as f64 / floor)
    } else {
        "-".into()
    }
}

/// The table printed after a run.
pub fn table(r: &RunResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} ({} {}, {} conns x {} pipeline, {}): {} ops, {:.0} ops/s, errors {:?}",
        r.name,
        r.workload,
        r.durability,
        r.connections,
        r.pipeline,
        r.mode,
        r.ops,
        r.throughput_ops_s,
        r.errors
    );
    let _ = writeln!(s, "  {:>6} {:>9} {:>9} {:>9}", "", "µs", "×fsync", "×rtt");
    let l = &r.latency_us;
    for (name, v) in
        [("p50", l.p50), ("p90", l.p90), ("p99", l.p99), ("p99.9", l.p999), ("max", l.max)]
    {
        let _ = writeln!(
            s,
            "  {name:>6} {v:>9} {:>9} {:>9}",
            ratio(v, r.floors.fdatasync_us),
            ratio(v, r.floors.loopback_rtt_us)
        );
    }
    s
}

/// A Markdown summary of a suite.
pub fn markdown(results: &[RunResult]) -> String {
    let mut s = String::new();
    if let Some(f) = results.first().map(|r| &r.floors) {
        let _ = writeln!(
            s,
            "Floors measured in the same run: fdatasync p50 {:.0} µs appending ({:.0} µs overwriting), loopback round trip p50 {:.0} µs.\n",
            f.fdatasync_us, f.overwrite_fdatasync_us, f.loopback_rtt_us
        );
    }
    let _ = writeln!(
        s,
        "| run | workload | durability | conns×pipeline | ops/s | p50 µs | p99 µs | p99.9 µs | max µs | p50 ×fsync | p50 ×rtt | errors |"
    );
    let _ = writeln!(s, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in results {
        let l = &r.latency_us;
        let errors: u64 = r.errors.values().sum();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}×{} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.workload,
            r.durability,
            r.connections,
            r.pipeline,
            r.throughput_ops_s,
            l.p50,
            l.p99,
            l.p999,
            l.max,
            ratio(l.p50, r.floors.fdatasync_us),
            ratio(l.p50, r.floors.loopback_rtt_us),
            errors
        );
    }
    s
}

/// An SVG of each run's latency by percentile (log latency axis), one line per run.
pub fn svg(results: &[RunResult]) -> String {
    let (w, h, left, bottom, top, right) = (900.0, 520.0, 70.0, 60.0, 30.0, 220.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let max_us =
        results.iter().flat_map(|r| r.distribution.iter().map(|d| d.1)).max().unwrap_or(1).max(10)
            as f64;
    let lo = 1.0f64;
    let y = |us: f64| top + ph - ((us.max(lo)).log10() / max_us.log10()) * ph;
    // x: "nines" scale, so 90, 99, 99.9, 99.99 are evenly spaced.
    let nines = |p: f64| if p >= 100.0 { 5.0 } else { (-(1.0 - p / 100.0).log10()).min(5.0) };
    let x = |p: f64| left + nines(p) / 5.0 * pw;
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
        "#7f7f7f", "#bcbd22",
    ];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"18\" font-size=\"14\">Kahuna latency by percentile (µs, log scale)</text>\n"
    );
    let mut tick = 1.0;
    while tick <= max_us * 1.0001 {
        let (x2, yy, tx, ty) = (left + pw, y(tick), left - 6.0, y(tick) + 4.0);
        let _ = writeln!(s, "<line x1=\"{left}\" x2=\"{x2}\" y1=\"{yy}\" y2=\"{yy}\" stroke=\"#ddd\"/><text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{tick}</text>");
        tick *= 10.0;
    }
    for (p, label) in
        [(0.0, "0"), (90.0, "90"), (99.0, "99"), (99.9, "99.9"), (99.99, "99.99"), (100.0, "max")]
    {
        let _ = writeln!(s, "<line x1=\"{0}\" x2=\"{0}\" y1=\"{top}\" y2=\"{1}\" stroke=\"#ddd\"/><text x=\"{0}\" y=\"{2}\" text-anchor=\"middle\">{label}</text>", x(p), top + ph, top + ph + 18.0);
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>",
        left + pw / 2.0,
        h - 12.0
    );
    for (i, r) in results.iter().enumerate() {
        let c = colors[i % colors.len()];
        let pts: Vec<String> = r
            .distribution
            .iter()
            .map(|(p, us)| format!("{:.1},{:.1}", x(*p), y(*us as f64)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        );
        let ly = top + 16.0 * i as f64 + 10.0;
        let _ = writeln!(s, "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\">{}</text>", left + pw + 12.0, ly - 4.0, left + pw + 30.0, ly, r.name);
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> RunResult {
        let mut a = new_hist();
        let mut b = new_hist();
        for v in 1..=100 {
            a.record(v).unwrap();
            b.record(v * 100).unwrap();
        }
        let h = merge([&a, &b]);
        RunResult {
            name: name.into(),
            workload: "kv-set".into(),
            durability: "persistent".into(),
            connections: 1,
            pipeline: 1,
            mode: "closed".into(),
            rate_ops_s: None,
            key_dist: "uniform".into(),
            key_prefix: None,
            keys: 10,
            value_size: 8,
            duration_s: 1.0,
            ops: h.len(),
            errors: BTreeMap::new(),
            throughput_ops_s: 200.0,
            latency_us: latency(&h),
            floors: Floors {
                fdatasync_us: 100.0,
                overwrite_fdatasync_us: 60.0,
                loopback_rtt_us: 50.0,
            },
            distribution: distribution(&h),
        }
    }

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let r = sample("a");
        assert_eq!(r.ops, 200);
        assert!(r.latency_us.max.abs_diff(10_000) <= 10, "{}", r.latency_us.max); // 3 significant digits
        assert!(r.latency_us.p50 >= 99 && r.latency_us.p50 <= 101, "{}", r.latency_us.p50);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v = serde_json::to_value(sample("a")).unwrap();
        for field in [
            "workload",
            "durability",
            "connections",
            "pipeline",
            "ops",
            "errors",
            "throughput_ops_s",
        ] {
            assert!(v.get(field).is_some(), "{field}");
        }
        for field in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_us"].get(field).is_some(), "{field}");
        }
        assert!(
            v["floors"]["fdatasync_us"].is_number() && v["floors"]["loopback_rtt_us"].is_number()
        );
        let back: RunResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample("a"));
    }

    #[test]
    fn human_outputs_name_every_run() {
        let rs = vec![sample("one"), sample("two")];
        let md = markdown(&rs);
        assert!(
            md.contains("| one |") && md.contains("| two |") && md.contains("fdatasync p50 100")
        );
        let svg = svg(&rs);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(table(&rs[0]).contains("×fsync"));
    }
}
