//! The deployment files under `deploy/` agree with the node: the systemd unit (hardening, the
//! paths of its configuration, the unit name the runbook uses; `systemd-analyze verify` where
//! it exists), the container file (multi-stage, non-root, the node's ports), its build context
//! (`.dockerignore`: the workspace in, `target/`, `.git`, data and keys out) and its entry point
//! (run with a fake `quorate` in PATH: the id from the pod name, certificate links, refusals),
//! the Kubernetes manifests (one StatefulSet per node, identical but for the node; ports
//! against the configuration the pods mount, which quorate-config parses and validates for
//! every node; probe paths answered 200 by the node's own HTTP endpoint; DNS names of the
//! headless Service; the disruption budget keeping a quorum; no pod able to read another
//! node's key) and the scrape configurations (the `job` and `cluster` labels the alert rules
//! use). (Skipped when the crate is built outside the repository.)

use quorate_node::config::NodeConfig;
use serde_yaml::Value;
use std::path::{Path, PathBuf};

fn deploy() -> Option<PathBuf> {
    let d = Path::new(&*std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()))
        .join("../../deploy");
    d.is_dir().then_some(d)
}

/// `Section` → list of (key, value) of a systemd unit file, in order.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not `key=value`: {line}"));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

/// The units `systemctl start|stop|restart|enable|disable|status` names in `text`.
fn systemctl_units(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in text.split("systemctl ").skip(1) {
        let mut words = part.split_whitespace();
        let Some(verb) = words.next() else { continue };
        if !["start", "stop", "restart", "enable", "disable", "status", "reload", "kill"].contains(&verb) {
            continue;
        }
        let unit = words.find(|w| !w.starts_with('-'));
        out.extend(unit.map(|u| u.trim_matches(|c: char| c == '`' || c == ',' || c == ')').to_string()));
    }
    out
}

#[test]
fn the_systemd_unit_is_hardened_and_matches_its_configuration() {
    let Some(dir) = deploy() else { return };
    let text = std::fs::read_to_string(dir.join("systemd/quorate.service")).expect("the unit");
    let entries = unit_entries(&text);
    let get = |section: &str, key: &str| -> Vec<&str> {
        entries.iter().filter(|(s, k, _)| s == section && k == key).map(|(_, _, v)| v.as_str()).collect()
    };
    let one = |key: &str| -> &str {
        let v = get("Service", key);
        assert_eq!(v.len(), 1, "[Service] {key} once: {v:?}");
        v[0]
    };
    for (key, want) in [
        ("NoNewPrivileges", "true"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "true"),
        ("PrivateTmp", "true"),
        ("Restart", "on-failure"),
        ("User", "quorate"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(one(key), want, "[Service] {key}");
    }
    assert!(one("LimitNOFILE").parse::<u64>().is_ok_and(|n| n >= 65_536), "LimitNOFILE");
    // The configuration the unit starts with: parsed and validated; its data directory is the
    // one writable path, its certificates under a read-only one.
    let exec = one("ExecStart");
    let config_path = exec.split_once("--config ").map(|(_, p)| p.trim()).expect("ExecStart passes --config");
    assert!(exec.contains(" node start "), "{exec}");
    assert_eq!(config_path, "/etc/quorate/quorate.toml");
    let config = NodeConfig::from_toml(&std::fs::read_to_string(dir.join("systemd/quorate.toml")).expect("toml"))
        .expect("the sample configuration parses");
    config.validate().expect("the sample configuration validates");
    let rw = one("ReadWritePaths");
    assert_eq!(Path::new(rw), config.data_dir, "ReadWritePaths is the data directory");
    let ro = one("ReadOnlyPaths");
    for p in [&config.tls.ca, &config.tls.cert, &config.tls.key] {
        assert!(p.starts_with(ro), "{} under ReadOnlyPaths {ro}", p.display());
    }
    assert!(Path::new(config_path).starts_with(ro));

    // The docs start and stop the unit by its file's name (not a template: `quorate@1` is
    // no unit), and run the offline commands as the unit's user.
    let unit_name = "quorate";
    let ops = std::fs::read_to_string(dir.join("../docs/operations.md")).expect("docs/operations.md");
    let units = systemctl_units(&ops);
    assert!(units.len() >= 3, "the docs name the unit: {units:?}");
    for u in &units {
        assert!(u == unit_name || u == &format!("{unit_name}.service"), "`systemctl ... {u}`: the unit is {unit_name}");
    }
    assert_eq!(
        systemctl_units("systemctl start quorate@1 && systemctl enable --now quorate"),
        ["quorate@1", "quorate"]
    );
    assert_eq!(one("User"), unit_name);
    for line in
        ops.lines().filter(|l| l.contains("force-new-cluster --data-dir") || l.contains("snapshot restore --from"))
    {
        if line.contains(&format!("--data-dir {} ", config.data_dir.display())) {
            assert!(line.contains("runuser -u quorate -- "), "as the unit's user: {line}");
        }
    }

    // The unit's syntax, by systemd itself where it is installed (the binary's path replaced:
    // verify wants an executable there).
    let verify = std::process::Command::new("systemd-analyze").arg("--version").output();
    if verify.is_err() {
        println!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let unit = tmp.path().join("quorate.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/quorate", "/bin/true")).expect("write");
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
fn the_container_file_is_multi_stage_non_root_and_exposes_the_ports() {
    let Some(dir) = deploy() else { return };
    let text = std::fs::read_to_string(dir.join("container/Containerfile")).expect("the container file");
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let last_stage = lines.iter().rposition(|l| l.starts_with("FROM ")).expect("a stage");
    let runtime = &lines[last_stage..];
    let user = runtime.iter().find_map(|l| l.strip_prefix("USER ")).expect("the runtime stage sets USER");
    let uid: u32 = user.split(':').next().and_then(|u| u.parse().ok()).expect("a numeric uid");
    assert_ne!(uid, 0, "non-root");
    assert!(runtime.iter().any(|l| l.starts_with("COPY --from=")), "the binary comes from the build stage");
    let expose: Vec<&str> =
        runtime.iter().filter_map(|l| l.strip_prefix("EXPOSE ")).flat_map(|l| l.split(' ')).collect();
    assert!(expose.contains(&"7001/udp") && expose.contains(&"9100/tcp"), "{expose:?}");
    // The Kubernetes pods run as the image's user.
    let k8s = manifests(&dir);
    for sts in statefulsets(&k8s) {
        let pod = &sts["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(u64::from(uid)));
    }
    // The entry point is a shell script that parses.
    let entry = dir.join("container/entrypoint.sh");
    let out = std::process::Command::new("sh").arg("-n").arg(&entry).output().expect("sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn manifests(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("kubernetes/quorate.yaml")).expect("the manifests");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("each document is YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn port_of(addr: std::net::SocketAddr) -> u64 {
    u64::from(addr.port())
}

/// The named container port.
fn container_port(container: &Value, name: &str) -> (u64, String) {
    let p = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("a container port {name}"));
    (p["containerPort"].as_u64().expect("a number"), p["protocol"].as_str().unwrap_or("TCP").to_string())
}

/// The StatefulSets: one per node, each of one pod.
fn statefulsets(docs: &[Value]) -> Vec<&Value> {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "StatefulSet").collect();
    assert!(!found.is_empty(), "a StatefulSet");
    found
}

/// The value of an environment variable of a container.
fn env_of<'a>(container: &'a Value, key: &str) -> Option<&'a str> {
    container["env"].as_sequence()?.iter().find(|e| e["name"] == key).and_then(|e| e["value"].as_str())
}

/// The node id a StatefulSet's pod runs as (its QUORATE_ID).
fn node_id(sts: &Value) -> u64 {
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    env_of(container, "QUORATE_ID").and_then(|v| v.parse().ok()).expect("each StatefulSet sets QUORATE_ID")
}

/// `labels` has every entry of `selector`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_mapping().expect("matchLabels").iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `sts` with its node's number written `N`: an exact `"<id>"` and a `-<id>` suffix of any
/// string. Two StatefulSets that normalise to the same value differ only in the node.
fn normalised(sts: &Value, id: u64) -> Value {
    fn walk(v: &Value, id: &str, suffix: &str) -> Value {
        match v {
            Value::String(s) if s == id => Value::String("N".into()),
            Value::String(s) => match s.strip_suffix(suffix) {
                Some(head) => Value::String(format!("{head}-N")),
                None => v.clone(),
            },
            Value::Sequence(items) => Value::Sequence(items.iter().map(|i| walk(i, id, suffix)).collect()),
            Value::Mapping(m) => {
                Value::Mapping(m.iter().map(|(k, v)| (walk(k, id, suffix), walk(v, id, suffix))).collect())
            }
            other => other.clone(),
        }
    }
    walk(sts, &id.to_string(), &format!("-{id}"))
}

#[test]
fn the_kubernetes_manifests_agree_with_the_node_configuration() {
    let Some(dir) = deploy() else { return };
    let docs = manifests(&dir);
    let sets = statefulsets(&docs);
    let service = of_kind(&docs, "Service");
    let svc = service["metadata"]["name"].as_str().expect("service name");
    let cm = of_kind(&docs, "ConfigMap");
    let toml = cm["data"]["quorate.toml"].as_str().expect("quorate.toml in the ConfigMap");
    let mut config = NodeConfig::from_toml(toml).expect("the pods' configuration parses");
    assert_eq!(config.peers.len(), sets.len(), "one StatefulSet per peer");
    let mut ids = Vec::new();
    let first = sets[0];
    let first_id = node_id(first);
    for sts in &sets {
        let id = node_id(sts);
        ids.push(id);
        let ns = sts["metadata"]["namespace"].as_str().expect("a namespace");
        let name = sts["metadata"]["name"].as_str().expect("a name");
        assert_eq!(sts["spec"]["replicas"].as_u64(), Some(1), "{name}: one pod per StatefulSet");
        assert_eq!(sts["spec"]["serviceName"].as_str(), Some(svc), "{name}");
        // A changed template restarts no pod by itself: `apply` never takes every node down.
        assert_eq!(sts["spec"]["updateStrategy"]["type"].as_str(), Some("OnDelete"), "{name}");
        let labels = &sts["spec"]["template"]["metadata"]["labels"];
        assert_eq!(&sts["spec"]["selector"]["matchLabels"], labels, "{name}");
        for other in sets.iter().filter(|o| o["metadata"]["name"] != name) {
            let theirs = &other["spec"]["template"]["metadata"]["labels"];
            assert!(!selects(&sts["spec"]["selector"]["matchLabels"], theirs), "{name} selects another set's pod");
        }
        // The configuration, as node `id` reads it (QUORATE_ID overrides `id`): parsed and
        // validated, and the peer name of node `id` is this StatefulSet's pod.
        config.id = id;
        config.validate().unwrap_or_else(|e| panic!("node {id}: {e}"));
        let want = format!("{name}-0.{svc}.{ns}.svc.cluster.local:{}", config.listen.port());
        assert_eq!(config.peers.get(&id), Some(&want), "node {id} is pod {name}-0");
        assert_eq!(
            labels["app.kubernetes.io/instance"].as_str(),
            Some(config.cluster.as_str()),
            "{name}: the pod label the scrape configurations turn into `cluster`"
        );
        check_pod(sts, &config, service);
        // Everything else is the same for every node.
        assert_eq!(normalised(sts, id), normalised(first, first_id), "{name} differs from the others beyond its node");
    }
    ids.sort_unstable();
    assert_eq!(ids, config.peers.keys().copied().collect::<Vec<_>>(), "the StatefulSets are the peers");
    assert_ne!(
        normalised(sets[0], first_id),
        normalised(
            &{
                let mut v = sets[0].clone();
                v["spec"]["template"]["spec"]["containers"][0]["image"] = Value::String("other".into());
                v
            },
            first_id
        ),
        "the comparison sees a difference"
    );

    // The headless Service: every node's pod, published before readiness.
    assert_eq!(service["spec"]["clusterIP"].as_str(), Some("None"), "headless");
    assert_eq!(service["spec"]["publishNotReadyAddresses"].as_bool(), Some(true), "names before readiness");
    for sts in &sets {
        assert!(selects(&service["spec"]["selector"], &sts["spec"]["template"]["metadata"]["labels"]));
    }

    // The disruption budget covers every node's pod and keeps a quorum.
    let pdb = of_kind(&docs, "PodDisruptionBudget");
    for sts in &sets {
        assert!(selects(&pdb["spec"]["selector"]["matchLabels"], &sts["spec"]["template"]["metadata"]["labels"]));
    }
    let nodes = sets.len() as u64;
    let unavailable = pdb["spec"]["maxUnavailable"].as_u64().expect("maxUnavailable");
    assert!(unavailable >= 1 && unavailable <= (nodes - 1) / 2, "a quorum of {nodes} survives {unavailable}");
}

/// One StatefulSet's pod against the configuration: ports, mounts, security, probes.
fn check_pod(sts: &Value, config: &NodeConfig, service: &Value) {
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let metrics = config.metrics_listen.expect("metrics_listen: the probes need it");
    assert_eq!(container_port(container, "quic"), (port_of(config.listen), "UDP".into()), "QUIC is UDP");
    assert_eq!(container_port(container, "metrics"), (port_of(metrics), "TCP".into()));
    assert!(config.listen.ip().is_unspecified() && metrics.ip().is_unspecified(), "pods listen on every address");
    for p in service["spec"]["ports"].as_sequence().expect("service ports") {
        let (port, proto) = container_port(container, p["name"].as_str().expect("named"));
        assert_eq!((p["port"].as_u64(), p["protocol"].as_str()), (Some(port), Some(proto.as_str())));
    }

    // Mounts: the configuration where the args say, the data directory on the claim, the
    // node's Secret where the configuration reads its certificates.
    let args: Vec<&str> = container["args"].as_sequence().expect("args").iter().filter_map(Value::as_str).collect();
    let config_path = args.iter().skip_while(|a| **a != "--config").nth(1).expect("--config PATH");
    let mounts = container["volumeMounts"].as_sequence().expect("mounts");
    let mount = |volume: &str| mounts.iter().find(|m| m["name"] == volume).unwrap_or_else(|| panic!("{volume}"));
    assert_eq!(mount("config")["mountPath"].as_str(), Some(*config_path));
    assert_eq!(mount("data")["mountPath"].as_str().map(Path::new), Some(config.data_dir.as_path()));
    let claims = sts["spec"]["volumeClaimTemplates"].as_sequence().expect("claims");
    assert!(claims.iter().any(|c| c["metadata"]["name"] == "data"), "data on a persistent volume");
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("volume {name}"));
    let tls = &volume("tls")["secret"];
    assert!(tls["secretName"].is_string(), "certificates from a Secret");
    let tls_dir = Path::new(mount("tls")["mountPath"].as_str().expect("tls mount"));
    assert!(mount("tls")["subPath"].is_null(), "not a subPath: a renewed Secret reaches the files");
    let items: Vec<(&str, &str)> = tls["items"]
        .as_sequence()
        .expect("the Secret's items")
        .iter()
        .map(|i| (i["key"].as_str().expect("key"), i["path"].as_str().expect("path")))
        .collect();
    for (path, key) in [(&config.tls.ca, "ca.crt"), (&config.tls.cert, "node.crt"), (&config.tls.key, "node.key")] {
        let item = items.iter().find(|(k, _)| *k == key).unwrap_or_else(|| panic!("the Secret's {key}"));
        assert_eq!(path, &tls_dir.join(item.1), "the configuration reads {key} from the Secret");
    }
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    // Probes: on the metrics port, at the paths the node's endpoint answers.
    let mut paths = Vec::new();
    for (probe, want) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/livez")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["port"].as_str(), Some("metrics"), "{probe} on the metrics port");
        let path = get["path"].as_str().expect("a path").to_string();
        assert_eq!(path, want, "{probe}");
        paths.push(path);
    }
    probe_paths_are_served(&paths);
}

/// Every Secret a pod template can read: volumes (secret, projected), env, envFrom, of every
/// container and init container.
fn secrets_of(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for v in pod["volumes"].as_sequence().into_iter().flatten() {
        out.extend(v["secret"]["secretName"].as_str().map(str::to_string));
        for s in v["projected"]["sources"].as_sequence().into_iter().flatten() {
            out.extend(s["secret"]["name"].as_str().map(str::to_string));
        }
    }
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in pod[key].as_sequence().into_iter().flatten() {
            for e in c["env"].as_sequence().into_iter().flatten() {
                out.extend(e["valueFrom"]["secretKeyRef"]["name"].as_str().map(str::to_string));
            }
            for e in c["envFrom"].as_sequence().into_iter().flatten() {
                out.extend(e["secretRef"]["name"].as_str().map(str::to_string));
            }
        }
    }
    out
}

/// `Err` names the first way a pod of `docs` could read another node's key: a Secret other
/// than its own node's, a Secret shared with another pod, API credentials, or a role in the
/// manifests.
fn one_secret_per_pod(docs: &[Value]) -> Result<(), String> {
    if let Some(role) = docs
        .iter()
        .find(|d| matches!(d["kind"].as_str(), Some("Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding")))
    {
        return Err(format!("the manifests grant API rights: {:?}", role["kind"]));
    }
    let mut seen: Vec<(String, u64)> = Vec::new();
    for sts in docs.iter().filter(|d| d["kind"] == "StatefulSet") {
        let id = node_id(sts);
        if sts["spec"]["replicas"].as_u64() != Some(1) {
            return Err(format!("node {id}: pods of one StatefulSet share its Secrets"));
        }
        let pod = &sts["spec"]["template"]["spec"];
        if pod["automountServiceAccountToken"].as_bool() != Some(false) {
            return Err(format!("node {id}: the pod gets a service-account token (API access to Secrets)"));
        }
        let secrets = secrets_of(pod);
        let own = format!("quorate-tls-node-{id}");
        if secrets != [own.clone()] {
            return Err(format!("node {id} reads the Secrets {secrets:?}, not only {own}"));
        }
        if let Some((_, other)) = seen.iter().find(|(s, _)| *s == own) {
            return Err(format!("nodes {other} and {id} both read {own}"));
        }
        seen.push((own, id));
    }
    if seen.is_empty() { Err("no StatefulSet".into()) } else { Ok(()) }
}

#[test]
fn no_pod_can_read_another_nodes_key() {
    let Some(dir) = deploy() else { return };
    let docs = manifests(&dir);
    one_secret_per_pod(&docs).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(statefulsets(&docs).len(), 3, "three nodes");

    // The check fails where it must: a pod mounting another node's Secret too (as a second
    // volume, or all keys in one Secret), a token, a role.
    let sts_at = docs.iter().position(|d| d["kind"] == "StatefulSet").expect("a StatefulSet");
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut d = docs.clone();
        f(&mut d[sts_at]);
        one_secret_per_pod(&d).expect_err("a mutated manifest is refused")
    };
    let e = mutate(&|s| {
        let extra: Value = serde_yaml::from_str("name: other\nsecret: {secretName: quorate-tls-node-2}").expect("yaml");
        s["spec"]["template"]["spec"]["volumes"].as_sequence_mut().expect("volumes").push(extra);
    });
    assert!(e.contains("reads the Secrets"), "{e}");
    let e = mutate(&|s| {
        let projected: Value =
            serde_yaml::from_str("name: all\nprojected: {sources: [{secret: {name: quorate-tls}}]}").expect("yaml");
        s["spec"]["template"]["spec"]["volumes"].as_sequence_mut().expect("volumes").push(projected);
    });
    assert!(e.contains("quorate-tls"), "{e}");
    let e = mutate(&|s| s["spec"]["template"]["spec"]["automountServiceAccountToken"] = Value::Bool(true));
    assert!(e.contains("token"), "{e}");
    let e = mutate(&|s| s["spec"]["replicas"] = Value::from(3));
    assert!(e.contains("share"), "{e}");
    let mut with_role = docs.clone();
    with_role.push(serde_yaml::from_str("kind: Role\nrules: [{resources: [secrets], verbs: [get]}]").expect("yaml"));
    assert!(one_secret_per_pod(&with_role).is_err());
    let mut shared = docs.clone();
    let second = shared.iter().rposition(|d| d["kind"] == "StatefulSet").expect("another");
    shared[second]["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] =
        shared[sts_at]["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"].clone();
    let name = shared[sts_at]["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .and_then(|v| v.iter().find(|v| v["name"] == "tls"))
        .map(|v| v["secret"]["secretName"].clone())
        .expect("tls");
    let vols = shared[second]["spec"]["template"]["spec"]["volumes"].as_sequence_mut().expect("volumes");
    let tls = vols.iter_mut().find(|v| v["name"] == "tls").expect("tls");
    tls["secret"]["secretName"] = name;
    let e = one_secret_per_pod(&shared).expect_err("two pods on one Secret");
    assert!(e.contains("both read"), "{e}");

    // The recipe that creates the Secrets (manifest header and docs/operations.md) fills each
    // node's Secret from that node's files only, under the keys the pods mount.
    let header = std::fs::read_to_string(dir.join("kubernetes/quorate.yaml")).expect("manifest");
    let ops = std::fs::read_to_string(dir.join("../docs/operations.md")).expect("docs/operations.md");
    for (what, text) in [("the manifest's header", header.as_str()), ("docs/operations.md", ops.as_str())] {
        assert!(
            text.contains("create secret generic quorate-tls-node-$n --from-file=ca.crt")
                && text.contains("--from-file=node.crt=node-$n.crt --from-file=node.key=node-$n.key"),
            "{what}: the per-node Secret recipe"
        );
    }
}

/// Serves the node's HTTP endpoint (healthy probes) and asks each path: 200 for every probe
/// path, 404 for a path the node does not serve (so the check can fail).
fn probe_paths_are_served(paths: &[String]) {
    struct Healthy;
    impl quorate_telemetry::http::Probes for Healthy {
        fn livez(&self) -> quorate_telemetry::http::Probe {
            quorate_telemetry::http::Probe::ok("live")
        }
        fn readyz(&self) -> quorate_telemetry::http::Probe {
            quorate_telemetry::http::Probe::ok("ready")
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(quorate_telemetry::http::serve(
            listener,
            quorate_telemetry::Metrics::new(),
            std::sync::Arc::new(Healthy),
            quorate_telemetry::http::HttpLimits::default(),
        ));
        let status = |path: String| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.expect("read");
            answer.split_whitespace().nth(1).map(str::to_string).unwrap_or_default()
        };
        for p in paths {
            assert_eq!(status(p.clone()).await, "200", "the node answers {p}");
        }
        assert_eq!(status("/healthz".into()).await, "404", "a path the node does not serve");
        server.abort();
    });
}

/// A Prometheus label name for a Kubernetes label (`app.kubernetes.io/instance` →
/// `app_kubernetes_io_instance`), as service discovery writes it.
fn sanitised(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// The `job` value docs/alerts.yml selects `up` by.
fn alerts_job() -> String {
    let rules = std::fs::read_to_string(
        Path::new(&*std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()))
            .join("../../docs/alerts.yml"),
    )
    .expect("docs/alerts.yml");
    let at = rules.find("up{job=\"").expect("the rules select up by job") + "up{job=\"".len();
    let job = &rules[at..at + rules[at..].find('"').expect("closing quote")];
    assert!(rules.matches("up{").count() == rules.matches(&format!("up{{job=\"{job}\"}}")).count(), "one job");
    job.to_string()
}

#[test]
fn the_scrape_configurations_give_the_labels_the_alert_rules_use() {
    let Some(dir) = deploy() else { return };
    let job = alerts_job();
    let yaml = |p: &str| -> Value {
        serde_yaml::from_str(&std::fs::read_to_string(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}")))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let scrape_job = |doc: &Value| -> Value {
        let jobs = doc["scrape_configs"].as_sequence().expect("scrape_configs");
        assert_eq!(jobs.len(), 1, "one job");
        let j = jobs[0].clone();
        assert_eq!(j["job_name"].as_str(), Some(job.as_str()), "the job label the rules select");
        assert!(
            doc["rule_files"].as_sequence().is_some_and(|r| r.iter().any(|f| f == "alerts.yml")),
            "loads the rules"
        );
        j
    };

    // Machines: every node's metrics address (deploy/systemd's configuration: node 1's
    // metrics port on each peer's host), with the nodes' cluster as `cluster`.
    let config = NodeConfig::from_toml(&std::fs::read_to_string(dir.join("systemd/quorate.toml")).expect("toml"))
        .expect("the sample configuration parses");
    let metrics = config.metrics_listen.expect("metrics_listen");
    let machines = scrape_job(&yaml("prometheus/prometheus.yml"));
    let groups = machines["static_configs"].as_sequence().expect("static_configs");
    assert_eq!(groups.len(), 1);
    let targets: Vec<&str> =
        groups[0]["targets"].as_sequence().expect("targets").iter().filter_map(Value::as_str).collect();
    let want: Vec<String> = config
        .peers
        .values()
        .map(|p| format!("{}:{}", p.rsplit_once(':').expect("host:port").0, metrics.port()))
        .collect();
    assert_eq!(targets, want, "every node's metrics_listen");
    assert!(want.contains(&metrics.to_string()), "node 1's own metrics_listen is a target");
    assert_eq!(groups[0]["labels"]["cluster"].as_str(), Some(config.cluster.as_str()));

    // Kubernetes: the pods' labels and ports as the manifests give them.
    let docs = manifests(&dir);
    let sets = statefulsets(&docs);
    let ns = sets[0]["metadata"]["namespace"].as_str().expect("namespace");
    let labels = &sets[0]["spec"]["template"]["metadata"]["labels"];
    let name_label = labels["app.kubernetes.io/name"].as_str().expect("name label");
    let cm = of_kind(&docs, "ConfigMap");
    let cluster = NodeConfig::from_toml(cm["data"]["quorate.toml"].as_str().expect("toml")).expect("parses").cluster;
    for sts in &sets {
        let l = &sts["spec"]["template"]["metadata"]["labels"];
        assert_eq!(l["app.kubernetes.io/instance"].as_str(), Some(cluster.as_str()), "the cluster label on every pod");
        let a = &sts["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(a["prometheus.io/scrape"].as_str(), Some("true"));
        container_port(&sts["spec"]["template"]["spec"]["containers"][0], "metrics");
    }
    let cluster_source = format!("__meta_kubernetes_pod_label_{}", sanitised("app.kubernetes.io/instance"));

    // Without the operator: pod discovery in the namespace, kept by name label, annotation
    // and port name; `cluster` from the pod label.
    let pods = scrape_job(&yaml("prometheus/kubernetes-pods.yml"));
    let sd = &pods["kubernetes_sd_configs"][0];
    assert_eq!(sd["role"].as_str(), Some("pod"));
    assert!(sd["namespaces"]["names"].as_sequence().is_some_and(|n| n.iter().any(|n| n == ns)));
    let relabel = pods["relabel_configs"].as_sequence().expect("relabel_configs");
    let keeps = |source: &str, regex: &str| {
        relabel.iter().any(|r| {
            r["action"] == "keep"
                && r["source_labels"].as_sequence().is_some_and(|s| s.len() == 1 && s[0] == source)
                && r["regex"] == regex
        })
    };
    assert!(keeps(&format!("__meta_kubernetes_pod_label_{}", sanitised("app.kubernetes.io/name")), name_label));
    assert!(keeps(&format!("__meta_kubernetes_pod_annotation_{}", sanitised("prometheus.io/scrape")), "true"));
    assert!(keeps("__meta_kubernetes_pod_container_port_name", "metrics"));
    assert!(
        relabel.iter().any(|r| r["target_label"] == "cluster"
            && r["source_labels"].as_sequence().is_some_and(|s| s.len() == 1 && s[0] == cluster_source.as_str())
            && r["action"].is_null()),
        "`cluster` from the pod label"
    );
    assert!(!relabel.iter().any(|r| r["target_label"] == "job"), "job stays the job's name");

    // With the operator: the ServiceMonitor selects the headless Service, scrapes its metrics
    // port and sets job and cluster.
    let text = std::fs::read_to_string(dir.join("kubernetes/monitoring.yaml")).expect("monitoring.yaml");
    let monitor: Value = serde_yaml::from_str(&text).expect("one YAML document");
    assert_eq!(monitor["kind"].as_str(), Some("ServiceMonitor"));
    let service = of_kind(&docs, "Service");
    assert!(selects(&monitor["spec"]["selector"]["matchLabels"], &service["metadata"]["labels"]));
    assert!(
        monitor["spec"]["namespaceSelector"]["matchNames"].as_sequence().is_some_and(|n| n.iter().any(|n| n == ns))
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    let port = endpoint["port"].as_str().expect("a port name");
    assert!(service["spec"]["ports"].as_sequence().expect("ports").iter().any(|p| p["name"] == port));
    assert_eq!(port, "metrics");
    let relabel = endpoint["relabelings"].as_sequence().expect("relabelings");
    assert!(relabel.iter().any(|r| r["targetLabel"] == "job" && r["replacement"] == job.as_str()), "job={job}");
    assert!(relabel.iter().any(|r| r["targetLabel"] == "cluster"
        && r["sourceLabels"].as_sequence().is_some_and(|s| s.len() == 1 && s[0] == cluster_source.as_str())));
}

/// Runs the entry point with `env` (and nothing else but PATH, which finds a fake `quorate`
/// first) and `args`: its exit code, stderr, and what the fake saw (its arguments one per
/// line, then `QUORATE_ID=...`).
fn entrypoint(env: &[(&str, &str)], args: &[&str]) -> (i32, String, Option<String>) {
    let dir = deploy().expect("deploy/");
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    let seen = tmp.path().join("seen");
    let fake = format!(
        "#!/bin/sh\n{{ for a in \"$@\"; do printf '%s\\n' \"$a\"; done; echo \"QUORATE_ID=${{QUORATE_ID-unset}}\"; }} > '{}'\nexit 7\n",
        seen.display()
    );
    std::fs::write(bin.join("quorate"), fake).expect("fake");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("quorate"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = std::process::Command::new("sh")
        .arg(dir.join("container/entrypoint.sh"))
        .args(args)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .envs(env.iter().copied())
        .output()
        .expect("sh runs");
    let code = out.status.code().expect("an exit code");
    (code, String::from_utf8_lossy(&out.stderr).into_owned(), std::fs::read_to_string(&seen).ok())
}

#[test]
fn the_entry_point_derives_the_id_links_certificates_and_refuses_bad_input() {
    if deploy().is_none() {
        return;
    }
    let args = ["node", "start", "--config", "/etc/quorate/a file.toml"];
    let ran = |env: &[(&str, &str)]| -> String {
        let (code, stderr, seen) = entrypoint(env, &args);
        // `exec`: the fake's exit code is the entry point's.
        assert_eq!(code, 7, "{env:?}: {stderr}");
        let seen = seen.expect("quorate ran");
        let mut lines: Vec<&str> = seen.lines().collect();
        let id = lines.pop().expect("the id line").to_string();
        assert_eq!(lines, args, "{env:?}: the arguments, unchanged");
        id
    };
    // StatefulSet pod names: the ordinal plus one.
    assert_eq!(ran(&[("HOSTNAME", "quorate-0")]), "QUORATE_ID=1");
    assert_eq!(ran(&[("HOSTNAME", "quorate-2")]), "QUORATE_ID=3");
    assert_eq!(ran(&[("HOSTNAME", "my-db-09")]), "QUORATE_ID=10", "leading zeros are not octal");
    // Not a pod name: the configuration's id stands.
    assert_eq!(ran(&[("HOSTNAME", "n1")]), "QUORATE_ID=unset");
    assert_eq!(ran(&[]), "QUORATE_ID=unset");
    // QUORATE_ID set wins over the pod name.
    assert_eq!(ran(&[("HOSTNAME", "quorate-0"), ("QUORATE_ID", "5")]), "QUORATE_ID=5");

    let refused = |env: &[(&str, &str)], why: &str| {
        let (code, stderr, seen) = entrypoint(env, &args);
        assert_eq!(code, 2, "{env:?} refused: {stderr}");
        assert!(stderr.contains(why), "{env:?}: {stderr}");
        assert!(seen.is_none(), "{env:?}: quorate must not run");
    };
    for bad in ["0", "abc", "-1", "01", "1 2", "1234567890123456789"] {
        refused(&[("QUORATE_ID", bad)], "QUORATE_ID=");
    }
    refused(&[("HOSTNAME", "quorate-1234567890")], "too large");

    // Certificates: this node's files linked under QUORATE_TLS_DIR.
    let tmp = tempfile::tempdir().expect("tempdir");
    let secret = tmp.path().join("secret");
    std::fs::create_dir(&secret).expect("secret dir");
    for f in ["ca.crt", "node-1.crt", "node-1.key", "node-2.crt"] {
        std::fs::write(secret.join(f), f).expect("write");
    }
    let tls = tmp.path().join("run/tls");
    let (s, t) = (secret.to_str().expect("utf-8"), tls.to_str().expect("utf-8"));
    assert_eq!(
        ran(&[("HOSTNAME", "quorate-0"), ("QUORATE_TLS_SECRET_DIR", s), ("QUORATE_TLS_DIR", t)]),
        "QUORATE_ID=1"
    );
    for (link, target) in [("ca.crt", "ca.crt"), ("node.crt", "node-1.crt"), ("node.key", "node-1.key")] {
        assert_eq!(std::fs::read_link(tls.join(link)).expect("a link"), secret.join(target), "{link}");
        assert_eq!(std::fs::read_to_string(tls.join(link)).expect("readable"), target);
    }
    // Node 2 has no key in the directory; no id at all.
    refused(&[("QUORATE_ID", "2"), ("QUORATE_TLS_SECRET_DIR", s), ("QUORATE_TLS_DIR", t)], "node-2.key is missing");
    refused(&[("HOSTNAME", "n1"), ("QUORATE_TLS_SECRET_DIR", s), ("QUORATE_TLS_DIR", t)], "node id is not");
}

/// Whether the build context keeps `path` under `.dockerignore`'s `patterns` (in order; the
/// last match decides, a `!` pattern keeps). Only the forms the file uses are understood:
/// `*`, `NAME` or `DIR/` (that path and below), `**/NAME` (that name at any depth, and below),
/// `**/*.EXT`; anything else fails the test.
fn in_context(patterns: &[&str], path: &str) -> bool {
    let mut kept = true;
    for p in patterns {
        let (keep, pat) = match p.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, *p),
        };
        let pat = pat.trim_end_matches('/');
        let hit = if pat == "*" {
            true
        } else if let Some(ext) = pat.strip_prefix("**/*.") {
            path.ends_with(&format!(".{ext}"))
        } else if let Some(name) = pat.strip_prefix("**/") {
            assert!(!name.contains(['*', '?', '[', '/']), "unsupported pattern {p}");
            path.split('/').any(|c| c == name)
        } else {
            assert!(!pat.contains(['*', '?', '[']), "unsupported pattern {p}");
            path == pat || path.starts_with(&format!("{pat}/"))
        };
        if hit {
            kept = keep;
        }
    }
    kept
}

#[test]
fn the_container_build_context_leaves_out_target_git_and_data() {
    let Some(dir) = deploy() else { return };
    let root = dir.join("..");
    let text = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore at the context's root");
    let patterns: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(patterns.first(), Some(&"*"), "an allow-list: everything left out first");
    for gone in [
        "target/ci/quorate",
        ".git/HEAD",
        "data/node-1/CURRENT",
        "certs/node-1.key",
        "crates/quorate-node/target/debug/quorate",
        "crates/quorate-node/n1.qflt",
        "deploy/kubernetes/quorate.yaml",
        "docs/operations.md",
    ] {
        assert!(!in_context(&patterns, gone), "{gone} is not sent");
    }
    // What the build needs: the workspace (members, lock, toolchain, cargo config) and every
    // file the Containerfile copies from the context.
    let mut needed = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".into(),
        "rust-toolchain.toml".into(),
        ".cargo/config.toml".into(),
        "crates/quorate-node/src/main.rs".into(),
        "crates/quorate-admission/README.md".into(),
        "xtask/Cargo.toml".into(),
    ];
    let container = std::fs::read_to_string(dir.join("container/Containerfile")).expect("Containerfile");
    for line in container.lines().map(str::trim).filter(|l| l.starts_with("COPY ") && !l.contains("--from=")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for src in &words[1..words.len() - 1] {
            if *src != "." {
                needed.push((*src).to_string());
            }
        }
    }
    assert!(needed.iter().any(|n| n.ends_with("entrypoint.sh")), "the entry point is copied");
    for n in &needed {
        assert!(root.join(n).exists(), "{n} exists");
        assert!(in_context(&patterns, n), "{n} is sent");
    }
    // Every workspace member is sent.
    let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml"))
        .expect("Cargo.toml parses");
    for m in manifest["workspace"]["members"].as_array().expect("members") {
        let m = m.as_str().expect("a path").trim_end_matches("/*");
        assert!(
            in_context(&patterns, &format!("{m}/Cargo.toml")) || in_context(&patterns, &format!("{m}/x/Cargo.toml")),
            "{m}"
        );
    }
    // The matcher sees what it is given.
    assert!(in_context(&["*", "!a/"], "a/b") && !in_context(&["*", "!a/", "**/b"], "a/b"));
}
