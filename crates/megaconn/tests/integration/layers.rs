//! The library's layers, checked: lower layers never import upper ones, and
//! the protocols never import each other. The same picture as the `# Layout`
//! map in `src/lib.rs`:
//!
//! ```text
//!  server/   builder, dispatcher, workers          (decides the protocol)
//!  proto/    http1/, http2                         (never import each other)
//!  service/  body, upgrade, ws_axum (axum's WebSocket API), the service glue
//!  conn/     the connection core                   observe/  close reasons, stats,
//!  error.rs                                                  metrics, lifecycle
//! ```
//!
//! A source scan rather than a compiler feature: Rust allows any module to
//! name any other, so the rule needs a test to hold.

use std::path::{Path, PathBuf};

/// Rank of each top-level module: a module may import its own rank or lower.
const LAYERS: [(&str, u8); 7] = [
    ("error", 0),
    ("observe", 1),
    ("conn", 2),
    ("service", 3),
    ("message", 4),
    ("proto", 5),
    ("server", 6),
];

/// The protocols under `proto/`: none names another.
const PROTOCOLS: [&str; 4] = ["http1", "http2", "framed", "ws"];

/// The protocol a source file under `proto/` belongs to, if any.
fn protocol_of(rel: &Path) -> Option<&'static str> {
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
    if parts.next()? != "proto" {
        return None;
    }
    let name = parts.next()?;
    let name = name.trim_end_matches(".rs");
    PROTOCOLS.iter().copied().find(|p| *p == name)
}

fn rank(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::a::b` path in `text` (comments and docs included: a doc link
/// upward is an import of the idea, too).
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let path: Vec<String> = rest
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .next()
            .unwrap_or("")
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        out.push(path);
    }
    out
}

#[test]
fn lower_layers_never_import_upper_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs");
        if module == "lib" {
            continue; // lib.rs re-exports everything
        }
        // A top-level module the map leaves out would go unchecked: it must
        // be given its place.
        let Some(own) = rank(module) else {
            violations.push(format!(
                "{}: a module with no place in LAYERS",
                rel.display()
            ));
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for path in crate_paths(&text) {
            let Some(target) = path.first() else { continue };
            if let Some(theirs) = rank(target) {
                if theirs > own {
                    violations.push(format!("{}: crate::{}", rel.display(), path.join("::")));
                }
            }
            // The protocols stand side by side: neither names the other.
            if let (Some(own), "proto") = (protocol_of(rel), target.as_str()) {
                let other = path.get(1).map(String::as_str);
                if other.is_some_and(|other| PROTOCOLS.contains(&other) && other != own) {
                    violations.push(format!("{}: crate::{}", rel.display(), path.join("::")));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports from a lower layer up (or between protocols):\n{}",
        violations.join("\n")
    );
    // The scan found the sources: an empty walk would pass anything.
    assert!(
        checked > 50,
        "only {checked} source files scanned under {src:?}"
    );
}

#[test]
fn the_scan_sees_a_violation() {
    // The scanner itself can fail: an upward path is found.
    let paths = crate_paths("use crate::server::builder::Builder;\n// crate::proto::http2");
    assert_eq!(paths[0], ["server", "builder", "Builder"]);
    assert_eq!(paths[1], ["proto", "http2"]);
    assert!(rank("server") > rank("conn"));
    assert!(rank("proto") > rank("message"));
    assert_eq!(
        protocol_of(Path::new("proto/framed/conn.rs")),
        Some("framed")
    );
    assert_eq!(protocol_of(Path::new("proto/http2.rs")), Some("http2"));
    assert_eq!(protocol_of(Path::new("proto/mod.rs")), None);
}
