//! Every metric that an alert rule (`docs/alerts.yml`) or a dashboard panel
//! (`docs/grafana/quorate.json`) names exists in the node's metric registry
//! ([`quorate_telemetry::names::ALL`]) with the labels the expression uses.
//!
//! The expressions are parsed (a PromQL tokenizer and selector walk, enough for what the
//! rules and panels use): each metric selector is checked by name (a histogram's `_bucket`,
//! `_sum`, `_count` series by its base name), each label matcher by key against the metric's
//! labels plus the target labels Prometheus adds (`instance`, `job`, `cluster`), `le` against
//! the histogram's buckets, values of enumerated labels against their lists, every function
//! and aggregation against PromQL's, and every grouping label (`by`, `on`...) against the
//! labels of the metrics in the same expression. The rules select by no target label but
//! `job` on `up`, and every alert has a firing and a silent case in `docs/alerts.test.yml`,
//! which `cargo xtask alerts` evaluates with promtool. (Skipped when the crate is built outside
//! the repository.)

use quorate_telemetry::names::{self, ALL, Kind, MetricDef};
use std::path::Path;

/// Labels the scrape adds to every series: Prometheus's `instance` and `job`, and the
/// `cluster` label docs/operations.md asks operators to set per cluster.
const TARGET_LABELS: &[&str] = &["instance", "job", "cluster"];
/// PromQL functions the expressions may call.
const FUNCTIONS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "deriv",
    "predict_linear",
    "histogram_quantile",
    "clamp_min",
    "clamp_max",
    "abs",
    "absent",
    "absent_over_time",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "changes",
    "resets",
    "vector",
    "scalar",
    "time",
    "label_values",
];
/// PromQL aggregation operators.
const AGGREGATIONS: &[&str] = &["sum", "min", "max", "avg", "count", "stddev", "topk", "bottomk", "quantile", "group"];
/// Keywords followed by a list of label names.
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
/// Binary-operator keywords and literals.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];

/// One label matcher: key, operator, value.
type Matcher = (String, String, String);

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// Label matchers: (key, operator, value).
    Matchers(Vec<Matcher>),
    Open,
    Close,
    Other,
}

fn lex(expr: &str) -> Result<Vec<Tok>, String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            out.push(Tok::Ident(expr[s..i].to_string()));
        } else if c.is_ascii_digit() || c == b'.' {
            // Numbers, with exponents and duration units (`5m`, `1e3`).
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            out.push(Tok::Other);
        } else if c == b'[' {
            let end = expr[i..].find(']').ok_or("unclosed [")?;
            i += end + 1;
            out.push(Tok::Other);
        } else if c == b'{' {
            let (matchers, len) = matchers(&expr[i + 1..])?;
            out.push(Tok::Matchers(matchers));
            i += len + 2;
        } else if c == b'"' || c == b'\'' {
            let (_, len) = string(&expr[i..])?;
            i += len;
            out.push(Tok::Other);
        } else if c == b'(' {
            out.push(Tok::Open);
            i += 1;
        } else if c == b')' {
            out.push(Tok::Close);
            i += 1;
        } else if b"+-*/%^=!<>,".contains(&c) {
            i += 1;
            out.push(Tok::Other);
        } else {
            return Err(format!("unexpected {:?} at {i}", c as char));
        }
    }
    Ok(out)
}

/// A quoted string at the start of `s`: its value and the bytes it takes.
fn string(s: &str) -> Result<(String, usize), String> {
    let quote = s.as_bytes()[0];
    let mut value = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, ch)) = chars.next() {
        match ch {
            '\\' => {
                let (_, e) = chars.next().ok_or("dangling escape")?;
                value.push(e);
            }
            c if c as u32 == u32::from(quote) => return Ok((value, i + 1)),
            c => value.push(c),
        }
    }
    Err(format!("unclosed string in {s}"))
}

/// The label matchers of `s` (after a `{`) up to its `}`, and the bytes before the `}`.
fn matchers(s: &str) -> Result<(Vec<Matcher>, usize), String> {
    let mut out = Vec::new();
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            return Err("unclosed {".into());
        }
        if b[i] == b'}' {
            return Ok((out, i));
        }
        let k = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let key = s[k..i].to_string();
        if key.is_empty() {
            return Err(format!("a label name expected in {{{s}"));
        }
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let o = i;
        while i < b.len() && b"=!~".contains(&b[i]) {
            i += 1;
        }
        let op = s[o..i].to_string();
        if !["=", "!=", "=~", "!~"].contains(&op.as_str()) {
            return Err(format!("bad matcher operator {op:?} for {key}"));
        }
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || !(b[i] == b'"' || b[i] == b'\'') {
            return Err(format!("a quoted value expected for {key}"));
        }
        let (value, len) = string(&s[i..])?;
        i += len;
        out.push((key, op, value));
    }
}

/// The metric a series name belongs to, and the histogram suffix if any.
fn metric_of(name: &str) -> Option<(&'static MetricDef, &'static str)> {
    if let Some(m) = ALL.iter().find(|m| m.name == name) {
        return Some((m, ""));
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        ALL.iter().find(|m| m.name == base && m.kind == Kind::Histogram).map(|m| (m, *suffix))
    })
}

/// Values an enumerated label may take, by metric and label.
fn enumerated(metric: &str, label: &str) -> Option<&'static [&'static str]> {
    match (metric, label) {
        (names::INVARIANT_VIOLATIONS_TOTAL, names::LABEL_INVARIANT) => Some(names::invariant::ALL),
        (names::ELECTIONS_TOTAL, names::LABEL_REASON) => Some(names::election::ALL),
        (names::PEER_MESSAGES_REFUSED_TOTAL, names::LABEL_REASON) => Some(names::peer_refused::ALL),
        (names::ROLE, names::LABEL_ROLE) => Some(&["follower", "pre_candidate", "candidate", "leader"]),
        _ => None,
    }
}

/// Checks one expression; `Err` names the first problem.
fn check(expr: &str) -> Result<(), String> {
    let toks = lex(expr)?;
    let mut labels_in_expr: Vec<&str> = TARGET_LABELS.to_vec();
    let mut grouping: Vec<String> = Vec::new();
    let mut metrics = 0;
    let mut i = 0;
    while i < toks.len() {
        let Tok::Ident(id) = &toks[i] else {
            if let Tok::Matchers(_) = &toks[i] {
                return Err("a selector without a metric name".into());
            }
            i += 1;
            continue;
        };
        let next = toks.get(i + 1);
        if GROUPING.contains(&id.as_str()) {
            i += 1;
            if toks.get(i) == Some(&Tok::Open) {
                i += 1;
                while let Some(t) = toks.get(i) {
                    i += 1;
                    match t {
                        Tok::Ident(l) => grouping.push(l.clone()),
                        Tok::Close => break,
                        Tok::Other => {}
                        t => return Err(format!("unexpected {t:?} in a label list")),
                    }
                }
            }
            continue;
        }
        if KEYWORDS.contains(&id.as_str()) {
            i += 1;
            continue;
        }
        if next == Some(&Tok::Open) || next.is_some_and(|t| matches!(t, Tok::Ident(k) if k == "by" || k == "without")) {
            if !FUNCTIONS.contains(&id.as_str()) && !AGGREGATIONS.contains(&id.as_str()) {
                return Err(format!("unknown function or aggregation {id}"));
            }
            i += 1;
            continue;
        }
        // A metric selector.
        metrics += 1;
        let matchers = match next {
            Some(Tok::Matchers(m)) => m.clone(),
            _ => Vec::new(),
        };
        if id == "up" {
            // Prometheus's own series per target.
            for (k, _, _) in &matchers {
                if !TARGET_LABELS.contains(&k.as_str()) {
                    return Err(format!("up has no label {k}"));
                }
            }
        } else {
            let (m, suffix) = metric_of(id).ok_or_else(|| format!("unknown metric {id}"))?;
            labels_in_expr.extend(m.labels);
            if suffix == "_bucket" {
                labels_in_expr.push("le");
            }
            for (k, op, v) in &matchers {
                if TARGET_LABELS.contains(&k.as_str()) {
                    continue;
                }
                if k == "le" {
                    if suffix != "_bucket" {
                        return Err(format!("{id} has no label le"));
                    }
                    let known = v == "+Inf" || m.buckets().iter().any(|b| format!("{b}") == *v);
                    if !known || op != "=" {
                        return Err(format!("{id}: no bucket le{op}{v:?} (buckets {:?})", m.buckets()));
                    }
                    continue;
                }
                if !m.labels.contains(&k.as_str()) {
                    return Err(format!("{id} has no label {k} (it has {:?})", m.labels));
                }
                if let Some(values) = enumerated(m.name, k)
                    && (op == "=" || op == "!=")
                    && !values.contains(&v.as_str())
                {
                    return Err(format!("{id}: {k}={v:?} is none of {values:?}"));
                }
            }
        }
        i += if matches!(next, Some(Tok::Matchers(_))) { 2 } else { 1 };
    }
    if metrics == 0 {
        return Err("no metric in the expression".into());
    }
    for g in &grouping {
        if !labels_in_expr.contains(&g.as_str()) {
            return Err(format!("grouping by {g}, which no metric of the expression has"));
        }
    }
    Ok(())
}

fn root() -> std::path::PathBuf {
    Path::new(&*std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../..")
}

#[test]
fn the_checker_finds_what_is_wrong() {
    // Each of these must fail, or the checks below prove nothing.
    let wrong = [
        ("quorate_raft_has_leaders == 0", "unknown metric"),
        ("quorate_proposals_shed_total{principal=\"a\"}", "no label principal"),
        ("sum by (peer) (rate(quorate_proposals_shed_total[5m]))", "grouping by peer"),
        ("histogram_quantile(0.99, rate(quorate_storage_fsync_seconds_bucket{le=\"0.3\"}[5m]))", "no bucket"),
        ("quorate_raft_term{le=\"1\"}", "no label le"),
        ("quorate_invariant_violations_total{invariant=\"cross_replica\"} > 0", "none of"),
        ("rat(quorate_raft_term[5m])", "unknown function"),
        ("quorate_storage_fsync_seconds_total", "unknown metric"),
        ("1 > 0", "no metric"),
        ("{job=\"quorate\"}", "without a metric name"),
    ];
    for (expr, why) in wrong {
        let e = check(expr).expect_err(expr);
        assert!(e.contains(why), "{expr}: {e}");
    }
    let right = [
        "histogram_quantile(0.99, sum by (cluster, instance, le) (rate(quorate_storage_fsync_seconds_bucket[5m]))) > 0.05",
        "sum by (cluster) (quorate_raft_role{role=\"leader\"}) == 0",
        "quorate_proposal_commit_seconds_bucket{le=\"0.1\"} / quorate_proposal_commit_seconds_count",
        "process_open_fds / process_max_fds",
        "up{job=\"quorate\"} == 0",
    ];
    for expr in right {
        check(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    }
}

#[test]
fn every_alert_rule_names_existing_metrics_and_labels() {
    let Ok(text) = std::fs::read_to_string(root().join("docs/alerts.yml")) else { return };
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("docs/alerts.yml is YAML");
    let groups = doc["groups"].as_sequence().expect("groups");
    let mut alerts = Vec::new();
    for g in groups {
        assert!(g["name"].is_string(), "every group has a name");
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"].as_str().expect("an alert name").to_string();
            let expr = r["expr"].as_str().unwrap_or_else(|| panic!("{name}: an expr"));
            check(expr).unwrap_or_else(|e| panic!("alert {name}: {e}\n{expr}"));
            let severity = r["labels"]["severity"].as_str();
            assert!(matches!(severity, Some("page" | "ticket")), "{name}: severity page or ticket");
            assert!(r["annotations"]["summary"].is_string(), "{name}: a summary");
            alerts.push((name, expr.to_string()));
        }
    }
    // The alerts issue 21 asks for, each on the metric it is about.
    let wanted = [
        ("QuorateNoLeader", names::ROLE),
        ("QuorateInvariantViolation", names::INVARIANT_VIOLATIONS_TOTAL),
        ("QuorateCrossReplicaHashMismatch", names::invariant::CROSS_REPLICA_HASH),
        ("QuorateCertificateExpiringSoon", names::CERT_EXPIRY_SECONDS),
        ("QuorateFsyncSlow", names::FSYNC_SECONDS),
        ("QuorateApplyLag", names::APPLIED_INDEX),
        ("QuorateShedding", names::PROPOSALS_SHED_TOTAL),
        ("QuorateWriteLatencySLOFastBurn", names::PROPOSAL_COMMIT_SECONDS),
        ("QuorateWriteLatencySLOSlowBurn", names::PROPOSAL_COMMIT_SECONDS),
        ("QuorateRefusingWrites", names::REFUSING_WRITES),
        // A total outage pages: from Prometheus's own `up`, not from a node.
        ("QuorateQuorumLost", "up{job=\"quorate\"}"),
        ("QuorateQuorumLost", names::CONFIG_VOTERS_COUNT),
        ("QuorateNotScraped", "absent(up{job=\"quorate\"})"),
    ];
    for (alert, metric) in wanted {
        let (_, expr) = alerts.iter().find(|(a, _)| a == alert).unwrap_or_else(|| panic!("no alert {alert}"));
        assert!(expr.contains(metric), "{alert} watches {metric}: {expr}");
    }
    assert!(
        alerts.iter().any(|(a, e)| a == "QuorateCertificateExpiringSoon" && e.contains("14 * 86400")),
        "certificates: 14 days"
    );
}

/// Target labels a rule may select by: only `job` on `up` (the scrape configurations under
/// deploy/prometheus and deploy/kubernetes set it); `cluster` and `instance` only group.
#[test]
fn the_rules_select_by_no_target_label_but_the_job_of_up() {
    let Ok(text) = std::fs::read_to_string(root().join("docs/alerts.yml")) else { return };
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("docs/alerts.yml is YAML");
    for g in doc["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let expr = r["expr"].as_str().expect("expr");
            let toks = lex(expr).expect("lexes");
            for (i, t) in toks.iter().enumerate() {
                let Tok::Matchers(ms) = t else { continue };
                let metric = match i.checked_sub(1).map(|j| &toks[j]) {
                    Some(Tok::Ident(m)) => m.as_str(),
                    _ => "",
                };
                for (k, op, v) in ms {
                    if TARGET_LABELS.contains(&k.as_str()) {
                        assert!(
                            metric == "up" && k == "job" && op == "=" && v == "quorate",
                            "{}: selects {metric}{{{k}{op}{v:?}}}: a target label the scrape may not give",
                            r["alert"].as_str().unwrap_or("?")
                        );
                    }
                }
            }
        }
    }
}

/// docs/alerts.test.yml (promtool's rule tests, run by `cargo xtask alerts`) loads the rules
/// and has, for every alert, a case where it fires and one where it stays silent.
#[test]
fn every_alert_fires_and_stays_silent_in_the_promtool_tests() {
    let (Ok(rules), Ok(tests)) = (
        std::fs::read_to_string(root().join("docs/alerts.yml")),
        std::fs::read_to_string(root().join("docs/alerts.test.yml")),
    ) else {
        return;
    };
    let rules: serde_yaml::Value = serde_yaml::from_str(&rules).expect("alerts.yml");
    let tests: serde_yaml::Value = serde_yaml::from_str(&tests).expect("alerts.test.yml is YAML");
    assert_eq!(tests["rule_files"].as_sequence().map(Vec::len), Some(1));
    assert_eq!(tests["rule_files"][0].as_str(), Some("alerts.yml"), "the tests load docs/alerts.yml");
    let mut fires = std::collections::BTreeSet::new();
    let mut silent = std::collections::BTreeSet::new();
    for t in tests["tests"].as_sequence().expect("tests") {
        assert!(!t["input_series"].as_sequence().expect("input_series").is_empty());
        for case in t["alert_rule_test"].as_sequence().expect("alert_rule_test") {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            match case["exp_alerts"].as_sequence().map(Vec::len) {
                Some(0) | None => silent.insert(name),
                Some(_) => fires.insert(name),
            };
        }
    }
    let mut alerts = Vec::new();
    for g in rules["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            alerts.push(r["alert"].as_str().expect("alert").to_string());
        }
    }
    for a in &alerts {
        assert!(fires.contains(a), "{a}: no promtool case in which it fires");
        assert!(silent.contains(a), "{a}: no promtool case in which it stays silent");
    }
    for named in fires.union(&silent) {
        assert!(alerts.contains(named), "alerts.test.yml tests {named}, which alerts.yml does not define");
    }
}

#[test]
fn every_dashboard_panel_and_variable_names_existing_metrics_and_labels() {
    let Ok(text) = std::fs::read_to_string(root().join("docs/grafana/quorate.json")) else { return };
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = 0;
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            check(expr).unwrap_or_else(|e| panic!("panel {}: {e}\n{expr}", p["title"]));
            // Every selector is narrowed to the chosen cluster and instances.
            let selectors = expr.matches("quorate_").count() + expr.matches("process_").count();
            let narrowed = expr.matches("cluster=~\"$cluster\", instance=~\"$instance\"").count();
            assert_eq!(
                selectors, narrowed,
                "panel {}: every selector takes $cluster and $instance: {expr}",
                p["title"]
            );
            exprs += 1;
        }
    }
    assert!(exprs >= 20, "{exprs} expressions");
    let vars = dash["templating"]["list"].as_array().expect("variables");
    for name in ["cluster", "instance"] {
        let v = vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("a {name} variable"));
        let q = v["query"]["query"].as_str().expect("a query");
        let inner = q.strip_prefix("label_values(").and_then(|q| q.strip_suffix(&format!(", {name})")));
        let selector = inner.unwrap_or_else(|| panic!("{name}: label_values(<selector>, {name}), not {q}"));
        check(selector).unwrap_or_else(|e| panic!("variable {name}: {e}"));
    }
}
