//! The deployment files under `deploy/` agree with the node: the systemd unit (hardening, the
//! paths of its configuration; `systemd-analyze verify` where it exists), the container file
//! (multi-stage, non-root, the node's ports) and the Kubernetes manifests (ports against the
//! configuration the pods mount, which quorate-config parses and validates for every pod;
//! probe paths answered 200 by the node's own HTTP endpoint; DNS names of the headless
//! Service; the disruption budget keeping a quorum; certificates from the Secret).
//! (Skipped when the crate is built outside the repository.)

use quorate_node::config::NodeConfig;
use serde_yaml::Value;
use std::path::{Path, PathBuf};

fn deploy() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
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
    let pod = &statefulset(&k8s)["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(u64::from(uid)));
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

fn statefulset(docs: &[Value]) -> &Value {
    of_kind(docs, "StatefulSet")
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

#[test]
fn the_kubernetes_manifests_agree_with_the_node_configuration() {
    let Some(dir) = deploy() else { return };
    let docs = manifests(&dir);
    let sts = statefulset(&docs);
    let ns = sts["metadata"]["namespace"].as_str().expect("a namespace");
    let name = sts["metadata"]["name"].as_str().expect("a name");
    let replicas = sts["spec"]["replicas"].as_u64().expect("replicas");
    let pod = &sts["spec"]["template"]["spec"];
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&sts["spec"]["selector"]["matchLabels"], labels);
    let container = &pod["containers"][0];

    // The configuration the pods mount: parsed and validated for every pod's id (the entry
    // point sets QUORATE_ID = ordinal + 1).
    let cm = of_kind(&docs, "ConfigMap");
    let toml = cm["data"]["quorate.toml"].as_str().expect("quorate.toml in the ConfigMap");
    let mut config = NodeConfig::from_toml(toml).expect("the pods' configuration parses");
    assert_eq!(config.peers.len() as u64, replicas, "one peer per replica");
    let service = of_kind(&docs, "Service");
    let svc = service["metadata"]["name"].as_str().expect("service name");
    assert_eq!(sts["spec"]["serviceName"].as_str(), Some(svc));
    for ordinal in 0..replicas {
        config.id = ordinal + 1;
        config.validate().unwrap_or_else(|e| panic!("pod {ordinal}: {e}"));
        let want = format!("{name}-{ordinal}.{svc}.{ns}.svc.cluster.local:{}", config.listen.port());
        assert_eq!(config.peers.get(&(ordinal + 1)), Some(&want), "node {} is pod {ordinal}", ordinal + 1);
    }

    // Ports: the container's and the headless Service's are the configuration's.
    let metrics = config.metrics_listen.expect("metrics_listen: the probes need it");
    assert_eq!(container_port(container, "quic"), (port_of(config.listen), "UDP".into()), "QUIC is UDP");
    assert_eq!(container_port(container, "metrics"), (port_of(metrics), "TCP".into()));
    assert!(config.listen.ip().is_unspecified() && metrics.ip().is_unspecified(), "pods listen on every address");
    assert_eq!(service["spec"]["clusterIP"].as_str(), Some("None"), "headless");
    assert_eq!(service["spec"]["publishNotReadyAddresses"].as_bool(), Some(true), "names before readiness");
    assert_eq!(&service["spec"]["selector"], labels);
    for p in service["spec"]["ports"].as_sequence().expect("service ports") {
        let (port, proto) = container_port(container, p["name"].as_str().expect("named"));
        assert_eq!((p["port"].as_u64(), p["protocol"].as_str()), (Some(port), Some(proto.as_str())));
    }

    // Mounts: the configuration where the args say, the data directory on the claim, the
    // Secret where the entry point reads it, the certificate paths on a writable emptyDir.
    let args: Vec<&str> = container["args"].as_sequence().expect("args").iter().filter_map(Value::as_str).collect();
    let config_path = args.iter().skip_while(|a| **a != "--config").nth(1).expect("--config PATH");
    let mounts = container["volumeMounts"].as_sequence().expect("mounts");
    let mount = |volume: &str| mounts.iter().find(|m| m["name"] == volume).unwrap_or_else(|| panic!("{volume}"));
    assert_eq!(mount("config")["mountPath"].as_str(), Some(*config_path));
    assert_eq!(mount("data")["mountPath"].as_str().map(Path::new), Some(config.data_dir.as_path()));
    let claims = sts["spec"]["volumeClaimTemplates"].as_sequence().expect("claims");
    assert!(claims.iter().any(|c| c["metadata"]["name"] == "data"), "data on a persistent volume");
    let env = |key: &str| {
        container["env"].as_sequence().expect("env").iter().find(|e| e["name"] == key).and_then(|e| e["value"].as_str())
    };
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("volume {name}"));
    assert!(volume("tls")["secret"]["secretName"].is_string(), "certificates from a Secret");
    assert_eq!(mount("tls")["mountPath"].as_str(), env("QUORATE_TLS_SECRET_DIR"));
    let tls_dir = env("QUORATE_TLS_DIR").expect("QUORATE_TLS_DIR");
    assert!(volume("run")["emptyDir"].is_mapping());
    assert!(Path::new(tls_dir).starts_with(mount("run")["mountPath"].as_str().expect("run")));
    for (path, file) in [(&config.tls.ca, "ca.crt"), (&config.tls.cert, "node.crt"), (&config.tls.key, "node.key")] {
        assert_eq!(path, &Path::new(tls_dir).join(file), "the entry point links {file} there");
    }
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    // The disruption budget keeps a quorum.
    let pdb = of_kind(&docs, "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    let unavailable = pdb["spec"]["maxUnavailable"].as_u64().expect("maxUnavailable");
    assert!(unavailable >= 1 && unavailable <= (replicas - 1) / 2, "a quorum of {replicas} survives {unavailable}");

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
