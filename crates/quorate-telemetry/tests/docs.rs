//! The operator docs and the Grafana dashboard name only metrics that exist, and the docs list
//! every metric. (Skipped when the crate is built outside the repository.)

use quorate_telemetry::names::{ALL, Kind};
use std::path::Path;

fn metric_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("quorate_") {
        let start = i + pos;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        // A path (`quorate_core::CoreImage`) names a crate, not a metric.
        let path = text[end..].starts_with("::");
        if boundary && !path {
            let t = &text[start..end];
            // A histogram's series carry a suffix; other names may end in `_count` themselves.
            let t = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| t.strip_suffix(s))
                .find(|base| ALL.iter().any(|m| m.name == *base && m.kind == Kind::Histogram))
                .unwrap_or(t);
            out.push(t.trim_end_matches('_').to_string());
        }
        i = end.max(start + 1);
    }
    out
}

fn known(name: &str) -> bool {
    ALL.iter().any(|m| m.name == name)
}

#[test]
fn docs_and_dashboard_agree_with_the_names() {
    let root = Path::new(&*std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()))
        .join("../..");
    let (Ok(ops), Ok(dash)) = (
        std::fs::read_to_string(root.join("docs/operations.md")),
        std::fs::read_to_string(root.join("docs/grafana/quorate.json")),
    ) else {
        return;
    };
    // Crate and module paths (`quorate_telemetry::names`) are not metrics.
    let not_metric = |t: &str| t.starts_with("quorate_telemetry") || t.starts_with("quorate_node");
    for t in metric_tokens(&dash).iter().filter(|t| !not_metric(t)) {
        assert!(known(t), "the dashboard uses unknown metric {t}");
    }
    let section = ops.split("## Reading the metrics").nth(1).expect("a Reading the metrics section");
    for t in metric_tokens(section).iter().filter(|t| !not_metric(t)) {
        assert!(known(t), "docs/operations.md names unknown metric {t}");
    }
    for m in ALL {
        assert!(section.contains(&format!("`{}`", m.name)), "docs/operations.md does not list {}", m.name);
    }
    let dash: Vec<String> = metric_tokens(&dash);
    for core in ["quorate_raft_term", "quorate_raft_commit_index", "quorate_storage_fsync_seconds"] {
        assert!(dash.iter().any(|t| t == core), "the dashboard shows {core}");
    }
}
