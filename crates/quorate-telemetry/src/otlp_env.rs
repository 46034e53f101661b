//! The standard OpenTelemetry environment variables, read into an [`OtlpConfig`].
//!
//! Pure: the caller passes the lookup, so tests give a map instead of the process's
//! environment (which a test cannot change safely while other threads read it).

use crate::{
    BSP_QUEUE_SIZE_MAX, BSP_SCHEDULE_DELAY_MAX, BSP_SCHEDULE_DELAY_MIN, OTLP_TIMEOUT_MAX, OtlpConfig, ParentRoot,
    SERVICE_NAME_DEFAULT, TelemetryError, TraceSampler,
};
use std::time::Duration;

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn bad(var: &str, value: &str, why: &str) -> TelemetryError {
    TelemetryError::Otlp(format!("{var}={value:?}: {why}"))
}

/// The traces-specific variable, else the general one.
fn either(env: Env<'_>, suffix: &str) -> Option<(String, String)> {
    let traces = format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}");
    let general = format!("OTEL_EXPORTER_OTLP_{suffix}");
    env(&traces).map(|v| (traces, v)).or_else(|| env(&general).map(|v| (general, v)))
}

pub(crate) fn resolve(endpoint: &str, service_name: &str, env: Env<'_>) -> Result<Option<OtlpConfig>, TelemetryError> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    if let Some(v) = env("OTEL_TRACES_EXPORTER") {
        match v.trim() {
            "none" => return Ok(None),
            "otlp" => {}
            _ => return Err(bad("OTEL_TRACES_EXPORTER", &v, "only \"otlp\" and \"none\" are supported")),
        }
    }
    let endpoint = if let Some(e) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        e.trim().to_string()
    } else if let Some(e) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
        // The specification's rule for the general variable: the signal's path is appended.
        format!("{}/v1/traces", e.trim().trim_end_matches('/'))
    } else if !endpoint.trim().is_empty() {
        endpoint.trim().to_string()
    } else {
        return Ok(None);
    };
    if let Some((var, v)) = either(env, "PROTOCOL")
        && v.trim() != "http/protobuf"
    {
        return Err(bad(&var, &v, "only \"http/protobuf\" is supported"));
    }
    let mut c = OtlpConfig::new(endpoint);
    c.resource_attributes = match env("OTEL_RESOURCE_ATTRIBUTES") {
        Some(v) => key_values(&v).map_err(|why| bad("OTEL_RESOURCE_ATTRIBUTES", &v, &why))?,
        None => Vec::new(),
    };
    c.service_name = env("OTEL_SERVICE_NAME")
        .map(|v| v.trim().to_string())
        .or_else(|| c.resource_attributes.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone()))
        .or_else(|| (!service_name.trim().is_empty()).then(|| service_name.trim().to_string()))
        .unwrap_or_else(|| SERVICE_NAME_DEFAULT.to_string());
    c.resource_attributes.retain(|(k, _)| k != "service.name");
    if let Some((var, v)) = either(env, "HEADERS") {
        c.headers = key_values(&v).map_err(|why| bad(&var, "(hidden)", &why))?;
    }
    c.sampler = sampler(env)?;
    c.ca_file = either(env, "CERTIFICATE").map(|(_, v)| v.trim().into());
    match (either(env, "CLIENT_CERTIFICATE"), either(env, "CLIENT_KEY")) {
        (Some((_, cert)), Some((_, key))) => c.client_identity = Some((cert.trim().into(), key.trim().into())),
        (None, None) => {}
        (Some((var, v)), None) | (None, Some((var, v))) => {
            return Err(bad(&var, &v, "a client certificate and its key are given together"));
        }
    }
    let timeout_ms_max = OTLP_TIMEOUT_MAX.as_millis() as u64;
    if let Some((var, v)) = either(env, "TIMEOUT") {
        c.timeout = Duration::from_millis(number(&var, &v, 1, timeout_ms_max, "milliseconds")?);
    }
    if let Some(v) = env("OTEL_BSP_EXPORT_TIMEOUT") {
        let ms = number("OTEL_BSP_EXPORT_TIMEOUT", &v, 1, timeout_ms_max, "milliseconds")?;
        c.timeout = c.timeout.min(Duration::from_millis(ms));
    }
    if let Some(v) = env("OTEL_BSP_MAX_QUEUE_SIZE") {
        c.batch.queue_size = number("OTEL_BSP_MAX_QUEUE_SIZE", &v, 1, BSP_QUEUE_SIZE_MAX as u64, "spans")? as usize;
        c.batch.export_batch_size = c.batch.export_batch_size.min(c.batch.queue_size);
    }
    if let Some(v) = env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
        let most = c.batch.queue_size as u64;
        c.batch.export_batch_size =
            number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", &v, 1, most, "spans (the queue size at most)")? as usize;
    }
    if let Some(v) = env("OTEL_BSP_SCHEDULE_DELAY") {
        let (min, max) = (BSP_SCHEDULE_DELAY_MIN.as_millis() as u64, BSP_SCHEDULE_DELAY_MAX.as_millis() as u64);
        c.batch.schedule_delay =
            Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", &v, min, max, "milliseconds")?);
    }
    Ok(Some(c))
}

/// A whole number in `min..=max` (`what` says of what), or an error naming `var`.
fn number(var: &str, value: &str, min: u64, max: u64, what: &str) -> Result<u64, TelemetryError> {
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(bad(var, value, &format!("expected {min} to {max} {what}"))),
    }
}

fn sampler(env: Env<'_>) -> Result<TraceSampler, TelemetryError> {
    let Some(name) = env("OTEL_TRACES_SAMPLER") else { return Ok(TraceSampler::default()) };
    let ratio = || -> Result<f64, TelemetryError> {
        let Some(arg) = env("OTEL_TRACES_SAMPLER_ARG") else { return Ok(1.0) };
        match arg.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err(bad("OTEL_TRACES_SAMPLER_ARG", &arg, "expected a ratio between 0 and 1")),
        }
    };
    Ok(match name.trim() {
        "always_on" => TraceSampler::AlwaysOn,
        "always_off" => TraceSampler::AlwaysOff,
        "traceidratio" => TraceSampler::Ratio(ratio()?),
        "parentbased_always_on" => TraceSampler::ParentBased(ParentRoot::AlwaysOn),
        "parentbased_always_off" => TraceSampler::ParentBased(ParentRoot::AlwaysOff),
        "parentbased_traceidratio" => TraceSampler::ParentBased(ParentRoot::Ratio(ratio()?)),
        _ => {
            return Err(bad(
                "OTEL_TRACES_SAMPLER",
                &name,
                "expected always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off or parentbased_traceidratio",
            ));
        }
    })
}

/// `key=value,key2=value2` (the W3C baggage-like list of `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_EXPORTER_OTLP_HEADERS`): keys and values trimmed, values percent-decoded.
fn key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| format!("{item:?} is not key=value"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("{item:?} has an empty key"));
        }
        out.push((k.to_string(), percent_decode(v.trim())?));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("a % not followed by two hex digits")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a percent-encoded value that is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Result<Option<OtlpConfig>, TelemetryError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        OtlpConfig::from_env("http://127.0.0.1:4318/v1/traces", "", move |k| m.get(k).cloned())
    }

    #[test]
    fn the_configured_endpoint_and_defaults_without_variables() {
        let c = with(&[]).unwrap().unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(c.service_name, "quorate");
        assert_eq!(c.sampler, TraceSampler::ParentBased(ParentRoot::AlwaysOn));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert!(c.headers.is_empty() && c.resource_attributes.is_empty() && c.ca_file.is_none());
        let none = OtlpConfig::from_env("", "", |_| None).unwrap();
        assert!(none.is_none(), "no endpoint anywhere: nothing exported");
    }

    #[test]
    fn endpoint_variables_override_the_configuration() {
        let c = with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel.example:4318/")]).unwrap().unwrap();
        assert_eq!(c.endpoint, "https://otel.example:4318/v1/traces");
        let c = with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel.example:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://t.example/custom"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "https://t.example/custom", "the signal's variable is taken as is");
        assert!(with(&[("OTEL_SDK_DISABLED", "TRUE")]).unwrap().is_none());
        assert!(with(&[("OTEL_TRACES_EXPORTER", "none")]).unwrap().is_none());
        assert!(with(&[("OTEL_TRACES_EXPORTER", "zipkin")]).is_err());
        assert!(with(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).is_err());
        assert!(with(&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")]).unwrap().is_some());
    }

    #[test]
    fn service_name_resource_attributes_and_headers() {
        let c = with(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs, deployment.environment=prod%20eu")])
            .unwrap()
            .unwrap();
        assert_eq!(c.service_name, "from-attrs");
        assert_eq!(c.resource_attributes, vec![("deployment.environment".to_string(), "prod eu".to_string())]);
        let c = with(&[("OTEL_SERVICE_NAME", "kv"), ("OTEL_RESOURCE_ATTRIBUTES", "service.name=x")]).unwrap().unwrap();
        assert_eq!(c.service_name, "kv", "OTEL_SERVICE_NAME wins");
        let m: HashMap<&str, &str> = HashMap::new();
        let c = OtlpConfig::from_env("http://c:4318/v1/traces", "configured", |k| m.get(k).map(|v| v.to_string()))
            .unwrap()
            .unwrap();
        assert_eq!(c.service_name, "configured");
        let c = with(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20general"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=k1,x-tenant=t"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.headers, vec![("x-api-key".into(), "k1".into()), ("x-tenant".into(), "t".into())]);
        let err = with(&[("OTEL_EXPORTER_OTLP_HEADERS", "authorization")]).unwrap_err().to_string();
        assert!(err.contains("not key=value") && !err.contains("authorization\"="), "{err}");
        assert!(with(&[("OTEL_RESOURCE_ATTRIBUTES", "a=%zz")]).is_err());
    }

    #[test]
    fn samplers_certificates_and_timeouts() {
        let s = |name: &str, arg: &str| {
            with(&[("OTEL_TRACES_SAMPLER", name), ("OTEL_TRACES_SAMPLER_ARG", arg)]).map(|c| c.unwrap().sampler)
        };
        assert_eq!(s("always_off", "").unwrap(), TraceSampler::AlwaysOff);
        assert_eq!(s("traceidratio", "0.25").unwrap(), TraceSampler::Ratio(0.25));
        assert_eq!(s("parentbased_traceidratio", "0.5").unwrap(), TraceSampler::ParentBased(ParentRoot::Ratio(0.5)));
        assert!(s("traceidratio", "2").is_err());
        assert!(s("jaeger_remote", "").is_err());
        let c = with(&[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/k.pem"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.ca_file.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        assert_eq!(c.client_identity, Some(("/c.pem".into(), "/k.pem".into())));
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert!(with(&[("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c.pem")]).is_err());
        assert!(with(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")]).is_err());
    }

    /// Review of issue 21: the timeout was unbounded, and `OTEL_BSP_*` went to the SDK
    /// unchecked (a queue of 10^15 spans is allocated at start: the process aborts).
    #[test]
    fn timeouts_and_batch_settings_are_bounded_and_a_bad_one_names_its_variable() {
        let err = |vars: &[(&str, &str)]| with(vars).expect_err("refused").to_string();
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "86400000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "999999999"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "1000000000000000"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "-1"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
        ] {
            let e = err(&[(var, value)]);
            assert!(e.contains(var) && e.contains("expected"), "{var}={value}: {e}");
        }
        let c = with(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "30000")]).unwrap().unwrap();
        assert_eq!(c.timeout, OTLP_TIMEOUT_MAX, "the stated maximum itself is taken");
        let c = with(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "9000"), ("OTEL_BSP_EXPORT_TIMEOUT", "2500")]).unwrap().unwrap();
        assert_eq!(c.timeout, Duration::from_millis(2500), "the lower of the two");
        let c = with(&[("OTEL_BSP_MAX_QUEUE_SIZE", "100"), ("OTEL_BSP_SCHEDULE_DELAY", "250")]).unwrap().unwrap();
        assert_eq!(
            (c.batch.queue_size, c.batch.export_batch_size),
            (100, 100),
            "the default batch is cut to the queue"
        );
        assert_eq!(c.batch.schedule_delay, Duration::from_millis(250));
        let c =
            with(&[("OTEL_BSP_MAX_QUEUE_SIZE", "32768"), ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096")]).unwrap().unwrap();
        assert_eq!((c.batch.queue_size, c.batch.export_batch_size), (BSP_QUEUE_SIZE_MAX, 4096));
        let defaults = with(&[]).unwrap().unwrap().batch;
        assert_eq!(defaults, crate::BatchLimits::default());
        assert_eq!(defaults.checked().unwrap(), defaults);
        let mut huge = defaults;
        huge.queue_size = usize::MAX;
        assert!(huge.checked().is_err(), "a configuration built in code is checked too");
    }
}
