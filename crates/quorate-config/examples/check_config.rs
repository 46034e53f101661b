//! Checks a node configuration file the way `quorate node start` does (TOML, then the
//! environment overrides, then validation) and prints the effective configuration.
//!
//! `cargo run -p quorate-config --example check_config -- path/to/node.toml`
//! (without an argument it checks a built-in sample).

use quorate_config::NodeConfig;
use std::path::Path;
use std::process::ExitCode;

const SAMPLE: &str = r#"
id = 1
cluster = "dev"
listen = "127.0.0.1:7001"
data_dir = "/var/lib/quorate/n1"
[peers]
1 = "127.0.0.1:7001"
2 = "127.0.0.1:7002"
3 = "127.0.0.1:7003"
[tls]
ca = "certs/ca.pem"
cert = "certs/node-1.pem"
key = "certs/node-1.key"
"#;

fn main() -> ExitCode {
    let loaded = match std::env::args_os().nth(1) {
        Some(path) => NodeConfig::load(Path::new(&path)),
        None => NodeConfig::from_toml(SAMPLE),
    };
    let checked = loaded.and_then(|config| config.validate().map(|()| config));
    match checked.and_then(|config| config.to_toml()) {
        Ok(text) => {
            println!("# effective configuration\n{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
