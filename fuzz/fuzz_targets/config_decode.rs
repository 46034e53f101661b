//! The node's configuration decoder from arbitrary text: TOML parsing, the environment
//! overrides and validation. An error is fine, a panic is a bug. Input: the TOML text, then
//! optionally a NUL byte and up to four NUL-separated values for `QUORATE_ID`,
//! `QUORATE_LISTEN`, `QUORATE_DATA_DIR` and `QUORATE_METRICS_LISTEN`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_config::NodeConfig;

const VARS: [&str; 4] = ["QUORATE_ID", "QUORATE_LISTEN", "QUORATE_DATA_DIR", "QUORATE_METRICS_LISTEN"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.split('\0');
    let toml_text = parts.next().unwrap_or_default();
    let env: Vec<&str> = parts.take(VARS.len()).collect();
    let Ok(mut config) = NodeConfig::from_toml(toml_text) else { return };
    let _ = config.validate();
    // What parses must print as TOML and parse back to the same configuration.
    if let Ok(again) = config.to_toml() {
        assert_eq!(NodeConfig::from_toml(&again).ok().as_ref(), Some(&config), "round trip changed the config");
    }
    let lookup = |name: &str| VARS.iter().position(|v| *v == name).and_then(|i| env.get(i)).map(|v| (*v).to_string());
    if config.apply_env(lookup).is_ok() {
        let _ = config.validate();
        let _ = config.danger_settings();
    }
});
