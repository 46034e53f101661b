//! The `quorate` CLI against a real 3-node cluster of `quorate` processes on 127.0.0.1.

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/procs.rs"]
mod procs;
use procs::{Nodes, free_base_port, free_ports};
#[path = "support/cli.rs"]
mod cli;
use cli::{BIN, Env, dev_cluster, first_write, openssl, openssl_available, openssl_client, spawn_node, start};

#[test]
fn cli_against_a_three_node_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let env = dev_cluster(tmp.path(), free_base_port());
    let dir = env.dir.clone();
    let mut nodes = start(&dir);
    // The first write waits for an election (the client retries within its timeout).
    first_write(&env);
    assert_eq!(env.ok(&["kv", "get", "greeting"]), "hello\n");
    assert_eq!(env.ok(&["kv", "get", "greeting", "--consistency", "lease"]), "hello\n");

    let missing = env.cli(&["kv", "get", "nothing-here"]);
    assert_eq!(missing.status.code(), Some(3), "not found exits 3");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    env.ok(&["kv", "cas", "greeting", "hi", "--expected", "hello"]);
    let refused = env.cli(&["kv", "cas", "greeting", "x", "--expected", "hello"]);
    assert_eq!(refused.status.code(), Some(4), "a compare-and-swap that did not swap exits 4");
    env.ok(&["kv", "cas", "fresh", "1", "--absent"]);

    let txn = env.ok(&["kv", "txn", "if value(fresh) == 1; then put fresh 2; then get greeting; else get fresh"]);
    assert!(txn.starts_with("succeeded"), "{txn}");
    assert!(txn.contains("greeting=hi"), "{txn}");
    // A transaction whose comparison is false exits 4 (it used to exit 0).
    let failed = env.cli(&["kv", "txn", "if value(fresh) == 1; then put fresh 3; else get fresh"]);
    assert_eq!(failed.status.code(), Some(4), "{}", String::from_utf8_lossy(&failed.stdout));
    assert!(String::from_utf8_lossy(&failed.stdout).starts_with("failed"));

    env.ok(&["kv", "put", "user/a", "1"]);
    env.ok(&["kv", "put", "user/b", "2"]);
    assert_eq!(env.ok(&["kv", "scan", "--prefix", "user/"]), "user/a=1\nuser/b=2\n");
    env.ok(&["kv", "del", "user/a"]);
    assert_eq!(env.ok(&["kv", "scan", "--prefix", "user/"]), "user/b=2\n");

    // A new cluster is raised to the newest cluster version on its own (no `cluster finalize`):
    // its leader proposes it once every member is connected over quorate/2.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = env.ok(&["cluster", "status"]);
        if status.contains(&format!("cluster version {}", quorate_api::CLUSTER_VERSION)) {
            break;
        }
        assert!(Instant::now() < deadline, "a new cluster stayed below its cluster version:\n{status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // So a version-2 request works without finalize.
    env.ok(&["kv", "put", "range/a", "1"]);
    env.ok(&["kv", "put", "range/b", "2"]);
    env.ok(&["kv", "del-range", "range/", "range0"]);
    assert_eq!(env.ok(&["kv", "scan", "--prefix", "range/"]), "");

    let status = env.ok(&["cluster", "status"]);
    assert_eq!(status.lines().filter(|l| l.contains(" leader ")).count(), 1, "{status}");
    let members = env.ok(&["member", "list"]);
    assert_eq!(members.lines().filter(|l| l.contains("voter")).count(), 3, "{members}");

    json_output_exit_codes_and_large_values(&env);
    txn_from_a_file_and_from_standard_input(&env);
    top_and_bench_print_json(&env);

    // A usage error exits with 2, a refusal for the role with 6.
    assert_eq!(env.cli(&["kv", "get"]).status.code(), Some(2));
    let reader = Command::new(BIN)
        .args(["kv", "put", "k", "v", "--user", "reader"])
        .env("QUORATE_CERTS", dir.join("certs"))
        .env("QUORATE_CLUSTER", "e2e")
        .env("QUORATE_ENDPOINTS", &env.endpoints)
        .output()
        .unwrap();
    assert_eq!(reader.status.code(), Some(6), "refused for the role exits 6");
    assert!(String::from_utf8_lossy(&reader.stderr).contains("role"), "{}", String::from_utf8_lossy(&reader.stderr));

    snapshot_status_of_a_saved_snapshot(&env);
    endpoint_health_over_every_member(&env, &mut nodes);
}

/// `kv txn --file FILE` and `--file -` (standard input), text and JSON, and what a bad file
/// gives: a usage error (exit 2) that names the file or the problem, and no write.
fn txn_from_a_file_and_from_standard_input(env: &Env) {
    env.ok(&["kv", "put", "txn/a", "1"]);
    // Text, one clause per line, from a file.
    let file = env.dir.join("change.txn");
    std::fs::write(&file, "if value(txn/a) == 1\nthen put txn/a 2\nthen put \"txn/b\" \"two words\"\nelse get txn/a\n")
        .unwrap();
    let out = env.ok(&["kv", "txn", "--file", &file.to_string_lossy()]);
    assert!(out.starts_with("succeeded"), "{out}");
    assert_eq!(env.ok(&["kv", "get", "txn/b"]), "two words\n");
    // The same file again: its comparison is false now, exit 4 (the else branch ran).
    let out = env.cli(&["kv", "txn", "-f", &file.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    // JSON on standard input, with -o json.
    let json = r#"{"compare":[{"key":"txn/a","value":"2","op":"=="}],"success":[{"put":{"key":"txn/a","value":"3"}},{"get":{"key":"txn/b"}}],"failure":[]}"#;
    let out = env.cli_stdin(&["-o", "json", "kv", "txn", "--file", "-"], Some(json.as_bytes()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["succeeded"], true, "{j}");
    assert_eq!(j["results"][1]["value"], "two words", "{j}");
    assert_eq!(env.ok(&["kv", "get", "txn/a"]), "3\n");
    // Text on standard input.
    let out = env.cli_stdin(&["kv", "txn", "--file", "-"], Some(b"if value(txn/a) == 3; then del txn/b"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(env.cli(&["kv", "get", "txn/b"]).status.code(), Some(3));

    // A missing file, a file that is not a transaction, a file over the limit, and empty
    // standard input: exit 2, said plainly, nothing written.
    let usage = |args: &[&str], stdin: Option<&[u8]>, says: &str| {
        let out = env.cli_stdin(args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} should say {says:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", String::from_utf8_lossy(&out.stdout));
    };
    let missing = env.dir.join("no-such.txn");
    usage(&["kv", "txn", "--file", &missing.to_string_lossy()], None, "no-such.txn");
    let garbled = env.dir.join("garbled.txn");
    std::fs::write(&garbled, "if value(txn/a) === 3; then put txn/a 4").unwrap();
    usage(&["kv", "txn", "--file", &garbled.to_string_lossy()], None, "===");
    // Over 1 MiB: refused whole. It used to be cut at the limit and the rest ignored: here
    // the cut fell in a comment, and the transaction ran without its last clause.
    let big = format!("if value(txn/a) == 3; then put txn/a 5\n# {}\nthen put txn/b cut", "x".repeat(1024 * 1024));
    let big_file = env.dir.join("big.txn");
    std::fs::write(&big_file, &big).unwrap();
    usage(&["kv", "txn", "--file", &big_file.to_string_lossy()], None, "larger than");
    usage(&["kv", "txn", "--file", "-"], Some(b""), "transaction");
    usage(&["kv", "txn", "text", "--file", "-"], None, "cannot be used with");
    assert_eq!(env.ok(&["kv", "get", "txn/a"]), "3\n", "no bad transaction wrote");
}

/// `quorate top -o json`: one object per frame, one per line; `quorate bench -o json`: the
/// summary as one object.
fn top_and_bench_print_json(env: &Env) {
    let once = env.json(&["top", "--once"]);
    assert_eq!(once["frame"], 1, "{once}");
    let nodes = once["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{once}");
    assert_eq!(nodes.iter().filter(|n| n["role"] == "leader").count(), 1, "{once}");
    assert!(nodes.iter().all(|n| n["reachable"] == true && n["commit"].as_u64().unwrap() >= 1), "{once}");
    let out = env.ok(&["-o", "json", "top", "--frames", "2", "--interval-ms", "100"]);
    let frames: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(frames.len(), 2, "{out}");
    assert_eq!((frames[0]["frame"].clone(), frames[1]["frame"].clone()), (1.into(), 2.into()), "{out}");
    assert!(frames[0]["nodes"][0]["commits_per_sec"].is_null(), "no rate on the first frame: {out}");
    assert!(frames[1]["nodes"][0]["commits_per_sec"].is_number(), "a rate on the second: {out}");
    assert!(!out.contains('\x1b'), "no escape codes in JSON");

    let b = env.json(&["bench", "--duration", "1", "--clients", "2", "--keys", "10", "--ops-max", "200"]);
    assert_eq!((b["clients"].clone(), b["consistency"].clone()), (2.into(), "linearizable".into()), "{b}");
    let all = b["all"]["ops"].as_u64().unwrap();
    assert!((1..=200).contains(&all), "{b}");
    assert_eq!(all, b["reads"]["ops"].as_u64().unwrap() + b["writes"]["ops"].as_u64().unwrap(), "{b}");
    assert_eq!(b["all"]["errors"], 0, "{b}");
    let p = &b["all"]["latency_ms"];
    assert!(p["p50"].as_f64().unwrap() <= p["p99"].as_f64().unwrap(), "{b}");
    assert!(p["p99"].as_f64().unwrap() <= p["max"].as_f64().unwrap(), "{b}");
    assert_eq!(b["connections"], 2, "one connection per client by default: {b}");
    // Eight clients over one connection: concurrent writes, each in its own session, as
    // streams of that connection.
    let b = env.json(&[
        "bench",
        "--duration",
        "1",
        "--clients",
        "8",
        "--connections",
        "1",
        "--keys",
        "10",
        "--ops-max",
        "400",
        "--read-ratio",
        "0",
    ]);
    assert_eq!((b["clients"].clone(), b["connections"].clone()), (8.into(), 1.into()), "{b}");
    assert_eq!(b["writes"]["errors"], 0, "{b}");
    assert!(b["writes"]["ops"].as_u64().unwrap() >= 8, "{b}");
    let out = env.cli(&["bench", "--clients", "2", "--connections", "3"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("more than --clients"));
}

/// `snapshot save`, then `snapshot status FILE` on it, offline (no endpoints needed).
fn snapshot_status_of_a_saved_snapshot(env: &Env) {
    // `snapshot save` given only a follower still writes the snapshot on the leader (the
    // follower redirects), and says which node wrote it.
    let status = env.json(&["cluster", "status"]);
    let leader =
        status["nodes"].as_array().unwrap().iter().find(|n| n["role"] == "leader").unwrap()["id"].as_u64().unwrap();
    let follower = env.endpoints.split(',').find(|e| !e.starts_with(&format!("{leader}="))).unwrap().to_string();
    let snap = env.json(&["snapshot", "save", "--endpoints", &follower]);
    let path = snap["path"].as_str().unwrap().to_string();
    assert_eq!(snap["node"].as_u64(), Some(leader), "{snap}");
    assert!(path.contains(&format!("node-{leader}/")), "written on the leader, not on the follower asked: {snap}");
    let offline =
        |args: &[&str]| Command::new(BIN).args(args).env("QUORATE_ENDPOINTS", "1=127.0.0.1:1").output().unwrap();
    let out = offline(&["-o", "json", "snapshot", "status", &path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["index"], snap["index"], "{st}");
    assert!(st["term"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["members"]["voters"], serde_json::json!([1, 2, 3]), "{st}");
    assert!(st["keys"].as_u64().unwrap() >= 3 && st["records"].as_u64() >= st["keys"].as_u64(), "{st}");
    assert_eq!(st["file_bytes"].as_u64(), Some(std::fs::metadata(&path).unwrap().len()), "{st}");
    assert!(st["hash"].as_str().unwrap().starts_with("crc32:") && st["verified"] == true, "{st}");
    let out = offline(&["snapshot", "status", &path]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("MEMBERS   voters=1,2,3"), "{text}");
    assert!(text.lines().any(|l| l == format!("INDEX     {}", snap["index"])), "{text}");
    // A copy cut short: exit 1, said plainly, nothing on standard output.
    let bytes = std::fs::read(&path).unwrap();
    let cut = env.dir.join("cut.qsnap");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = offline(&["snapshot", "status", &cut.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not verify"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `endpoint health` asks every member, also those --endpoints does not list; a stopped
/// member makes it exit 1 and is named.
fn endpoint_health_over_every_member(env: &Env, nodes: &mut Nodes) {
    let table = env.ok(&["endpoint", "health"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID  ADDRESS") && lines[0].contains("HEALTHY"), "{table}");
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[1..4].iter().all(|l| l.split_whitespace().nth(2) == Some("true")), "{table}");
    assert_eq!(lines[4], "cluster: 3 of 3 voters healthy: quorum", "{table}");
    // Only node 1 given: the members come from the cluster.
    let first = env.endpoints.split(',').next().unwrap().to_string();
    let j = env.json(&["endpoint", "health", "--endpoints", &first]);
    assert_eq!(j["healthy"], true, "{j}");
    let members = j["members"].as_array().unwrap();
    assert_eq!(members.iter().map(|m| m["id"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3], "{j}");
    let leaders: std::collections::BTreeSet<u64> = members.iter().map(|m| m["leader"].as_u64().unwrap()).collect();
    assert_eq!(leaders.len(), 1, "one leader known by all: {j}");
    assert!(members.iter().all(|m| m["refusing_writes"] == false && m["took_ms"].is_u64()), "{j}");

    // Stop a follower: exit 1, that member unhealthy (unreachable), the others healthy.
    let leader = *leaders.iter().next().unwrap();
    let down = (1..=3u64).find(|id| *id != leader).unwrap();
    let child = &mut nodes.0[(down - 1) as usize];
    child.kill().unwrap();
    child.wait().unwrap();
    let out = env.cli(&["-o", "json", "endpoint", "health", "--timeout", "3"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["healthy"], false, "{j}");
    for m in j["members"].as_array().unwrap() {
        let id = m["id"].as_u64().unwrap();
        if id == down {
            assert_eq!(m["healthy"], false, "{j}");
            assert!(m["error"].as_str().unwrap().starts_with("unreachable"), "{j}");
        } else {
            assert_eq!(m["healthy"], true, "{j}");
        }
    }
    let out = env.cli(&["endpoint", "health", "--timeout", "3"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("node {down} at ")) && text.contains("unreachable"), "{text}");
    // Nobody answers: exit 5.
    let dead = free_ports(1);
    let out = env.cli(&["endpoint", "health", "--endpoints", &format!("1=127.0.0.1:{dead}"), "--timeout", "2"]);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `-o json` on the data commands, the exit codes of a script's view, values from a file and
/// from standard input, and unambiguous scan output.
fn json_output_exit_codes_and_large_values(env: &Env) {
    let put = env.json(&["kv", "put", "j/text", "hello"]);
    assert!(put["revision"].as_u64().unwrap() > 0, "{put}");
    let got = env.json(&["kv", "get", "j/text"]);
    assert_eq!(
        (got["found"].as_bool(), got["key"].as_str(), got["value"].as_str()),
        (Some(true), Some("j/text"), Some("hello"))
    );
    assert_eq!(got["version"], 1);
    assert!(got["read"]["node"].as_u64().is_some(), "{got}");
    let missing = env.cli(&["-o", "json", "kv", "get", "j/none"]);
    assert_eq!(missing.status.code(), Some(3));
    let m: Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!((m["found"].as_bool(), m["key"].as_str()), (Some(false), Some("j/none")));

    // A 1 MiB value from a file, and a binary value from standard input.
    let big: Vec<u8> = (0..quorate_api::limits::VALUE_BYTES_MAX).map(|i| b'a' + (i % 26) as u8).collect();
    let file = env.dir.join("big.value");
    std::fs::write(&file, &big).unwrap();
    env.ok(&["kv", "put", "j/big", "--value-file", &file.to_string_lossy()]);
    let out = env.cli(&["kv", "get", "j/big"]);
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), big.len() + 1, "the value and a newline");
    assert_eq!(&out.stdout[..big.len()], &big[..]);
    let binary = [0xffu8, 0x00, b'=', b'\n'];
    let out = env.cli_stdin(&["kv", "put", "j/bin", "--value-file", "-"], Some(&binary));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let too_big = env.dir.join("too-big.value");
    std::fs::write(&too_big, vec![0u8; quorate_api::limits::VALUE_BYTES_MAX + 1]).unwrap();
    assert_eq!(env.cli(&["kv", "put", "j/x", "--value-file", &too_big.to_string_lossy()]).status.code(), Some(2));

    // Scan: JSON lines, binary as base64; text escaped so that `=` and newlines are unambiguous.
    env.ok(&["kv", "put", "j/a=b", "line\nnext"]);
    let out = env.ok(&["-o", "json", "kv", "scan", "--prefix", "j/"]);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let keys: Vec<&str> = lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["j/a=b", "j/big", "j/bin", "j/text"], "{out:.300}");
    assert_eq!(lines[0]["value"], "line\nnext");
    assert_eq!(lines[2]["value_base64"], "/wA9Cg==", "not UTF-8: base64 under another name");
    assert!(lines[2].get("value").is_none());
    let text = env.ok(&["kv", "scan", "--prefix", "j/a"]);
    assert_eq!(text, "j/a\\x3db=line\\nnext\n");
    let text = env.ok(&["kv", "scan", "--prefix", "j/bin"]);
    assert_eq!(text, "j/bin=\\xff\\x00=\\n\n");
    let out = env.ok(&["-o", "json", "kv", "scan", "--prefix", "j/", "--limit", "1"]);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{out:.300}");
    assert_eq!((lines[1]["more"].as_bool(), lines[1]["next_key"].as_str()), (Some(true), Some("j/big")));
    // At a revision: the pairs as they were then, page by page, with the same `more`.
    let all = env.ok(&["-o", "json", "kv", "scan", "--prefix", "j/"]);
    let rev = all.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["mod_revision"].as_u64().unwrap()).max();
    let rev = rev.unwrap().to_string();
    env.ok(&["kv", "put", "j/a=b", "changed"]);
    let out = env.ok(&["-o", "json", "kv", "scan", "--prefix", "j/", "--rev", &rev, "--limit", "1"]);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{out:.300}");
    assert_eq!(lines[0]["value"], "line\nnext", "the value at revision {rev}");
    assert_eq!((lines[1]["more"].as_bool(), lines[1]["next_key"].as_str()), (Some(true), Some("j/big")));
    assert_eq!(env.ok(&["kv", "scan", "--prefix", "j/a", "--rev", &rev]), "j/a\\x3db=line\\nnext\n");
    assert_eq!(env.ok(&["kv", "scan", "--prefix", "j/a"]), "j/a\\x3db=changed\n");

    // Compare-and-swap and transactions.
    let cas = env.cli(&["-o", "json", "kv", "cas", "j/text", "x", "--expected", "nope"]);
    assert_eq!(cas.status.code(), Some(4));
    let cas: Value = serde_json::from_slice(&cas.stdout).unwrap();
    assert_eq!((cas["succeeded"].as_bool(), cas["previous"]["value"].as_str()), (Some(false), Some("hello")));
    let txn = env.json(&["kv", "txn", "if value(j/text) == hello; then put j/text bye; then get j/bin"]);
    assert_eq!(txn["succeeded"], true);
    assert_eq!(txn["results"][0]["op"], "put");
    assert_eq!(
        (txn["results"][1]["found"].as_bool(), txn["results"][1]["value_base64"].as_str()),
        (Some(true), Some("/wA9Cg=="))
    );
    let del = env.json(&["kv", "del", "j/text"]);
    assert_eq!(del["deleted"], true);

    // Cluster commands.
    let members = env.json(&["member", "list"]);
    let kinds: Vec<(u64, &str)> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_u64().unwrap(), m["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [(1, "voter"), (2, "voter"), (3, "voter")]);
    let status = env.json(&["cluster", "status"]);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes.iter().filter(|n| n["role"] == "leader").count(), 1, "{status}");
    assert!(nodes.iter().all(|n| n["reachable"] == true && n["versions"]["binary"].is_string()), "{status}");
    assert_eq!(status["cluster_version"], quorate_api::CLUSTER_VERSION);
    let snap = env.json(&["snapshot", "save"]);
    assert!(snap["index"].as_u64().unwrap() > 0 && snap["path"].is_string(), "{snap}");

    // Nothing listens there: unavailable, exit 5, with or without JSON.
    let dead = free_ports(1);
    let endpoints = format!("1=127.0.0.1:{dead}");
    for args in [
        &["kv", "get", "k", "--endpoints", &endpoints, "--timeout", "2"][..],
        &["-o", "json", "member", "list", "--endpoints", &endpoints, "--timeout", "2"],
    ] {
        let out = env.cli(args);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // JSON on a command that has none is a usage error.
    assert_eq!(env.cli(&["-o", "json", "completions", "bash"]).status.code(), Some(2));
}

#[test]
fn certificates_from_certs_issue_and_openssl_are_accepted_and_node_4_joins() {
    let tmp = tempfile::tempdir().unwrap();
    let base = free_ports(4);
    let env = dev_cluster(tmp.path(), base);
    let dir = env.dir.clone();
    let certs = dir.join("certs");
    let ca_before = std::fs::read(certs.join("ca.crt")).unwrap();
    let mut nodes = start(&dir);
    first_write(&env);

    // A client certificate from `certs issue`, with the write role.
    let issued = env.json(&["certs", "issue", "client", "app:write", "--dir", &dir.to_string_lossy(), "--days", "20"]);
    assert_eq!(issued["identity"], "quorate://e2e/client/app?role=write");
    env.ok(&["kv", "put", "from-app", "1", "--user", "app"]);
    let admin_only = env.cli(&["member", "remove", "3", "--user", "app"]);
    assert_eq!(admin_only.status.code(), Some(6), "write role, admin request");

    // A client certificate made by openssl from the same CA (the documented recipe).
    if openssl_available() {
        openssl_client(&certs, "e2e", "ops", "admin");
        env.ok(&["kv", "put", "from-openssl", "1", "--user", "ops"]);
        assert_eq!(env.json(&["member", "list", "--user", "ops"])["members"].as_array().unwrap().len(), 3);
    } else {
        eprintln!("openssl is not installed: the openssl recipe was not executed");
    }

    // Node 4: a certificate from `certs issue`, a configuration like node 1's, then `member add`.
    env.ok(&["certs", "issue", "node", "4", "--dir", &dir.to_string_lossy()]);
    assert_eq!(std::fs::read(certs.join("ca.crt")).unwrap(), ca_before, "the CA is never rewritten");
    let mut config = quorate_node::config::NodeConfig::load(&dir.join("node-1.toml")).unwrap();
    config.id = 4;
    config.listen = format!("127.0.0.1:{}", base + 3).parse().unwrap();
    config.data_dir = dir.join("data").join("node-4");
    config.join = true;
    config.tls.cert = certs.join("node-4.crt");
    config.tls.key = certs.join("node-4.key");
    std::fs::write(dir.join("node-4.toml"), config.to_toml().unwrap()).unwrap();
    nodes.0.push(spawn_node(&dir, 4));
    // Refused (exit 6) until the leader has heard from a quorum recently after the start.
    let addr4 = format!("127.0.0.1:{}", base + 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    let added: Value = loop {
        let out = env.cli(&["-o", "json", "member", "add", "--learner", "4", &addr4]);
        if out.status.success() {
            break serde_json::from_slice(&out.stdout).unwrap();
        }
        assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(Instant::now() < deadline, "member add refused: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(added["added"], 4);
    env.ok(&["kv", "put", "after-4", "1"]);
    // Node 4 catches up over its certificate (peers accept it as client and as server).
    let with_4 = format!("{},4=127.0.0.1:{}", env.endpoints, base + 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = env.json(&["cluster", "status", "--endpoints", &with_4]);
        let n4 = &status["nodes"][3];
        let leader_commit = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["role"] == "leader")
            .map(|n| n["commit"].as_u64().unwrap())
            .next();
        if n4["reachable"] == true
            && n4["config"]["learners"] == serde_json::json!([4])
            && leader_commit.is_some_and(|c| n4["applied"].as_u64().unwrap_or(0) >= c)
        {
            break;
        }
        assert!(Instant::now() < deadline, "node 4 did not catch up: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(env.json(&["member", "promote", "4"])["promoted"], 4);
    let members = env.json(&["member", "list"]);
    let four = members["members"].as_array().unwrap().iter().find(|m| m["id"] == 4).cloned().unwrap();
    assert_eq!(four["kind"], "voter", "{members}");
}

/// The openssl recipe of docs/operations.md, as it stands there.
fn openssl_recipe() -> String {
    let docs = include_str!("../../../docs/operations.md");
    let start = docs.find("<!-- openssl-recipe -->\n```sh\n").expect("the recipe marker in docs/operations.md");
    let body = &docs[start..];
    let body = &body[body.find("```sh\n").unwrap() + 6..];
    body[..body.find("```").expect("the end of the recipe")].to_string()
}

#[test]
fn the_openssl_recipe_in_the_docs_makes_certificates_quorate_accepts() {
    if !openssl_available() {
        eprintln!("openssl is not installed: the openssl recipe was not executed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = Command::new("sh").args(["-eu", "-c", &openssl_recipe()]).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "the recipe failed: {}", String::from_utf8_lossy(&out.stderr));
    let load = |name: &str| {
        quorate_transport::Credentials::load(quorate_transport::TlsPaths {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        })
        .unwrap()
    };
    // Verified as the nodes verify: chain, validity, URI SAN, extended key usages.
    let node = load("node-1");
    assert_eq!(node.identity().to_string(), "quorate://prod/node/1");
    node.check_usable().unwrap();
    let client = load("client-ops");
    assert_eq!(client.identity().to_string(), "quorate://prod/client/ops?role=admin");
    client.check_usable().unwrap();
    // `certs issue` issues from the CA openssl made, and openssl verifies what it issued.
    let issue = Command::new(BIN)
        .args(["certs", "issue", "node", "2", "--dir", &dir.to_string_lossy(), "--cluster", "prod", "--days", "90"])
        .output()
        .unwrap();
    assert!(issue.status.success(), "{}", String::from_utf8_lossy(&issue.stderr));
    load("node-2").check_usable().unwrap();
    for purpose in ["sslserver", "sslclient"] {
        openssl(&["verify", "-CAfile", "ca.crt", "-purpose", purpose, "node-2.crt"], dir);
    }
    // A client certificate without clientAuth (serverAuth only) is refused.
    std::fs::write(
        dir.join("bad.ext"),
        "extendedKeyUsage=serverAuth\nsubjectAltName=URI:quorate://prod/client/bad?role=read\n",
    )
    .unwrap();
    openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "client-bad.key"], dir);
    openssl(&["req", "-new", "-key", "client-bad.key", "-subj", "/CN=bad", "-out", "bad.csr"], dir);
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "bad.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-days",
            "1",
            "-extfile",
            "bad.ext",
            "-out",
            "client-bad.crt",
        ],
        dir,
    );
    let e = load("client-bad").check_usable().unwrap_err();
    assert!(e.to_string().contains("not usable"), "{e}");
}

/// Review of issue 21, two findings shown on one cut-off leader. Node 3 has a 60 s election
/// timeout (so, as leader, its check-quorum period is 60 s too): made leader and then left
/// alone (nodes 1 and 2 killed), it goes on naming itself leader and answering status and
/// health for the whole test, the position of a leader on the minority side of a partition.
/// - `snapshot save` on it wrote the backup at once and reported it good (a stale leader's
///   file, possibly missing acknowledged writes): now the save first confirms leadership with
///   a quorum round at the save's index, which cannot complete, so the save fails and no file
///   is written.
/// - `endpoint health` called it healthy (it answers and names a leader): now healthy means
///   a linearizable read through it, which it cannot serve; exit 5, no quorum.
#[test]
fn a_cut_off_leader_neither_saves_a_snapshot_nor_reports_healthy() {
    let tmp = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let env = dev_cluster(tmp.path(), base);
    let config = env.dir.join("node-3.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("election_timeout_ms = 1000"), "{text}");
    std::fs::write(&config, text.replace("election_timeout_ms = 1000", "election_timeout_ms = 60000")).unwrap();
    let mut nodes = start(&env.dir);
    first_write(&env);
    // Leadership to node 3, and a write through it, so that its term has a committed entry.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = env.cli(&["leader", "transfer", "--to", "3"]);
        let status = env.json(&["cluster", "status"]);
        let leader =
            status["nodes"].as_array().unwrap().iter().find(|n| n["role"] == "leader").map(|n| n["id"].clone());
        if leader == Some(Value::from(3)) {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 did not become leader: {status} {out:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    env.ok(&["kv", "put", "before-the-cut", "1"]);
    // Before the cut: the save works, through node 3.
    let only_3 = format!("3=127.0.0.1:{}", base + 2);
    let saved = env.json(&["snapshot", "save", "--endpoints", &only_3]);
    assert_eq!(saved["node"], 3, "{saved}");
    let backups = env.dir.join("data").join("node-3").join("backups");
    let files = || std::fs::read_dir(&backups).map(|d| d.count()).unwrap_or(0);
    let before = files();
    assert!(before >= 1, "{saved}");

    for id in [1, 2] {
        let child = &mut nodes.0[id - 1];
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // Node 3 still names itself leader (check-quorum has 60 s).
    let out = env.cli(&["-o", "json", "cluster", "status", "--endpoints", &only_3, "--timeout", "3"]);
    let st: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("cluster status printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let me = st["nodes"].as_array().unwrap().iter().find(|n| n["id"] == 3).cloned().unwrap();
    assert_eq!(me["role"], "leader", "{st}");

    let out = env.cli(&["snapshot", "save", "--endpoints", &only_3, "--timeout", "3"]);
    assert!(!out.status.success(), "a cut-off leader's save must fail: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(files(), before, "no backup file written by the cut-off leader");

    let out = env.cli(&["-o", "json", "endpoint", "health", "--endpoints", &only_3, "--timeout", "3"]);
    assert_eq!(out.status.code(), Some(5), "no quorum: {}", String::from_utf8_lossy(&out.stderr));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m3 = j["members"].as_array().unwrap().iter().find(|m| m["id"] == 3).cloned().unwrap();
    assert_eq!(m3["healthy"], false, "{j}");
    assert_eq!(m3["leader"], 3, "it still names itself leader, and is not healthy: {j}");
    assert!(m3["error"].as_str().unwrap().contains("no linearizable read"), "{j}");
    assert_eq!(j["cluster"]["quorum"], false, "{j}");
    assert_eq!(j["cluster"]["healthy_voters"], serde_json::json!([]), "{j}");
    // Still nothing written after the save's quorum round has had time to fail.
    assert_eq!(files(), before);
}

/// `member update ID --peer ADDR` (etcd's `member update`): refused before the cluster is
/// finalized at version 2 (its gate), then, after finalize, node 3 moves to another port:
/// the change goes through the log, node 3 restarts listening there, and the others reach it
/// at its new address (it catches up on a write made while it was away).
#[test]
fn member_update_is_gated_then_moves_a_member_the_others_reach_at_its_new_address() {
    let tmp = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let env = dev_cluster(tmp.path(), base);
    // An empty store directory: the nodes do not take themselves for a new cluster's first
    // start, write no bootstrap marker, and stay at cluster version 1, as an upgraded
    // cluster does until `cluster finalize`.
    for id in 1..=3 {
        std::fs::create_dir_all(env.dir.join("data").join(format!("node-{id}")).join("store")).unwrap();
    }
    let mut nodes = start(&env.dir);
    first_write(&env);
    let status = env.ok(&["cluster", "status"]);
    assert!(status.contains("cluster version 1"), "{status}");
    let moved = free_ports(1);
    let new_addr = format!("127.0.0.1:{moved}");
    let out = env.cli(&["member", "update", "3", "--peer", &new_addr]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("needs cluster version 2"), "the gate: {stderr}");
    let members = env.json(&["member", "list"]);
    assert!(members.to_string().contains(&format!("127.0.0.1:{}", base + 2)), "unchanged: {members}");

    env.ok(&["cluster", "finalize"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.ok(&["cluster", "status"]).contains("cluster version 2") {
        assert!(Instant::now() < deadline, "finalize was not applied");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Node 3 stops; its address changes through the log (nodes 1 and 2 are a quorum).
    let child = &mut nodes.0[2];
    child.kill().unwrap();
    child.wait().unwrap();
    let out = env.ok(&["member", "update", "3", "--peer", &new_addr]);
    assert!(out.contains(&format!("node 3 is now reached at {new_addr}")), "{out}");
    let members = env.json(&["member", "list"]);
    let m3 = members["members"].as_array().unwrap().iter().find(|m| m["id"] == 3).cloned().unwrap();
    assert_eq!(m3["address"], new_addr.as_str(), "{members}");
    env.ok(&["kv", "put", "moved", "yes"]);

    // Node 3 comes back listening at its new address only.
    let config = env.dir.join("node-3.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let old_addr = format!("127.0.0.1:{}", base + 2);
    assert!(text.contains(&format!("listen = \"{old_addr}\"")), "{text}");
    std::fs::write(&config, text.replace(&old_addr, &new_addr)).unwrap();
    nodes.0[2] = spawn_node(&env.dir, 3);
    // It catches up: the leader reaches it at the new address (a stale read is served by
    // node 3 from its own state machine).
    let only_3 = format!("3={new_addr}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = env.cli(&["kv", "get", "moved", "--consistency", "stale", "--endpoints", &only_3, "--timeout", "2"]);
        if out.status.success() && out.stdout == b"yes\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 did not catch up at its new address: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And the whole cluster is healthy through it, with node 3 at its new address.
    let endpoints = format!("1=127.0.0.1:{},2=127.0.0.1:{},{only_3}", base, base + 1);
    let j = env.json(&["endpoint", "health", "--endpoints", &endpoints]);
    assert_eq!(j["healthy"], true, "{j}");
}

/// `advertise` is what a node expects the others to dial it at; the address they dial is the
/// cluster's (the bootstrap `peers`, then `member add`/`member update` through the log). Node 3
/// advertises another address than the cluster has for it: every member — node 3 included —
/// lists the address the others dial (node 3 used to list its own `advertise`, so two members
/// disagreed on where node 3 is), and node 3 warns at start with the `member update` that
/// would make its advertised address the cluster's. Node 2 advertises what the cluster has:
/// no warning. After that `member update` (made while node 3 is down), the members list the
/// advertised address; node 3, restarted listening there, starts from its own log's old
/// address (a warning again, stale) and, once it applies the update, says the warning is over.
#[test]
fn advertise_is_checked_against_the_address_the_cluster_dials() {
    let tmp = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let env = dev_cluster(tmp.path(), base);
    let other = free_ports(1);
    let (dialed, advertised) = (format!("127.0.0.1:{}", base + 2), format!("127.0.0.1:{other}"));
    let set_advertise = |id: u64, addr: &str| {
        let path = env.dir.join(format!("node-{id}.toml"));
        let mut config = quorate_node::config::NodeConfig::load(&path).unwrap();
        config.advertise = Some(addr.to_string());
        std::fs::write(&path, config.to_toml().unwrap()).unwrap();
    };
    set_advertise(3, &advertised);
    set_advertise(2, &format!("127.0.0.1:{}", base + 1));
    let mut nodes = start(&env.dir);
    first_write(&env);

    let address_of_3 = |via: u64| {
        let only = format!("{via}=127.0.0.1:{}", base + via as u16 - 1);
        let members = env.json(&["member", "list", "--endpoints", &only]);
        let m3 = members["members"].as_array().unwrap().iter().find(|m| m["id"] == 3).cloned().unwrap();
        m3["address"].as_str().unwrap().to_string()
    };
    for via in 1..=3 {
        assert_eq!(address_of_3(via), dialed, "node {via} lists node 3 where the others dial it");
    }
    let log = |id: u64| std::fs::read_to_string(env.dir.join(format!("node-{id}.log"))).unwrap();
    let fix = format!("quorate member update 3 --peer {advertised}");
    assert!(
        log(3).lines().any(|l| l.contains("advertise") && l.contains(&dialed) && l.contains(&fix)),
        "node 3 did not warn that its advertised address is not the cluster's: {}",
        log(3)
    );
    assert!(!log(2).contains("member update 2"), "node 2 advertises the cluster's address: {}", log(2));

    // The fix the warning names (it needs cluster version 2, which a new cluster reaches on
    // its own once every member is connected): the members list the advertised address
    // (node 3 itself listens elsewhere and may not hear of it: only nodes 1 and 2 are asked).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.ok(&["cluster", "status"]).contains(&format!("cluster version {}", quorate_api::CLUSTER_VERSION)) {
        assert!(Instant::now() < deadline, "the new cluster stayed below its cluster version");
        std::thread::sleep(Duration::from_millis(200));
    }
    let child = &mut nodes.0[2];
    child.kill().unwrap();
    child.wait().unwrap();
    env.ok(&["member", "update", "3", "--peer", &advertised]);
    for via in 1..=2 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while address_of_3(via) != advertised {
            assert!(Instant::now() < deadline, "node {via} still lists node 3 at {}", address_of_3(via));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    env.ok(&["kv", "put", "moved", "yes"]);

    // Node 3 back, listening where it advertises: its log still has the old address until it
    // applies the update, then the warning is withdrawn.
    let config = env.dir.join("node-3.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&format!("listen = \"{dialed}\""), &format!("listen = \"{advertised}\"")))
        .unwrap();
    nodes.0[2] = spawn_node(&env.dir, 3);
    let only_3 = format!("3={advertised}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.cli(&["kv", "get", "moved", "--consistency", "stale", "--endpoints", &only_3, "--timeout", "2"]).stdout
        != b"yes\n"
    {
        assert!(Instant::now() < deadline, "node 3 did not catch up at its advertised address");
        std::thread::sleep(Duration::from_millis(200));
    }
    let warned = log(3).lines().any(|l| l.contains(&fix));
    assert!(warned, "node 3 restarted from a log with its old address and warned: {}", log(3));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = log(3);
        let last = text.lines().rfind(|l| l.contains(&fix) || l.contains("advertise` address")).unwrap_or("");
        if last.contains("advertise` address") && !last.contains(&fix) {
            break;
        }
        assert!(Instant::now() < deadline, "node 3's last word on its address is the stale warning: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
