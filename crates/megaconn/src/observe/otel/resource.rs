//! The resource every exported span carries: who sent it.
//!
//! `service.name` (the SDK's detectors: `OTEL_SERVICE_NAME`, else
//! `unknown_service`; [`OtlpConfig::service_name`](super::OtlpConfig::service_name)
//! over both) and `service.instance.id`, which the semantic conventions ask
//! to be unique per instance of a service: without it the spans of the
//! worker processes of `serve --processes N`, or of a process and its
//! restart, cannot be told apart. It is a random UUID (version 4, as the
//! conventions recommend), made once per process, so that every tracer of
//! a process says the same. `OTEL_RESOURCE_ATTRIBUTES` overrides it (and
//! may add any other attribute), as the SDK's own detectors do.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry_sdk::resource::{
    EnvResourceDetector, ResourceDetector, SdkProvidedResourceDetector, TelemetryResourceDetector,
};
use opentelemetry_sdk::Resource;

/// The semantic conventions' key for the instance's unique id.
pub(crate) const SERVICE_INSTANCE_ID: &str = "service.instance.id";

/// The resource of a [`Tracing`](super::Tracing): this process's
/// `service.instance.id`, then what the SDK detects
/// (`OTEL_RESOURCE_ATTRIBUTES` among it, which wins), then `service_name`
/// when the program set one.
pub(crate) fn resource(service_name: Option<&str>) -> Resource {
    let detectors: [Box<dyn ResourceDetector>; 3] = [
        Box::new(SdkProvidedResourceDetector),
        Box::new(TelemetryResourceDetector),
        Box::new(EnvResourceDetector::new()),
    ];
    // A later source overrides an earlier one (`ResourceBuilder`'s merge).
    let mut resource = Resource::builder_empty()
        .with_attribute(KeyValue::new(SERVICE_INSTANCE_ID, instance_id()))
        .with_detectors(&detectors);
    if let Some(name) = service_name {
        resource = resource.with_service_name(name.to_string());
    }
    resource.build()
}

/// This process's instance id: a random (version 4) UUID, made once.
pub(crate) fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid_v4(random_bytes()))
}

/// 16 bytes from the kernel's random source. Should that fail (a seccomp
/// filter, a kernel before 3.17), the pid and the time, hashed with
/// std's randomly keyed hasher: still unique between the processes of a
/// host, if not random.
fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    // SAFETY: writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == bytes.len() as isize {
        return bytes;
    }
    use std::hash::{BuildHasher as _, Hasher as _};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(nanos);
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    bytes
}

/// `bytes` as a version 4 (random) UUID of RFC 9562, in its usual text
/// form (`xxxxxxxx-xxxx-4xxx-Vxxx-xxxxxxxxxxxx`, V one of 8, 9, a, b).
fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_id_is_a_version_4_uuid_made_once_per_process() {
        let id = instance_id();
        assert_eq!(id.len(), 36, "{id}");
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{id}"
        );
        assert!(groups[2].starts_with('4'), "version 4: {id}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "RFC variant: {id}"
        );
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_eq!(instance_id(), id, "one per process");
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
    }
}
