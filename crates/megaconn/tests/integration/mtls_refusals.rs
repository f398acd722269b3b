//! Client certificates refused, and the server's own revocation lists
//! (mutual TLS, `TlsConfig::client_auth`; the fixtures are `mtls.rs`'s):
//! each refusal counted by why in
//! `megaconn_tls_client_cert_refusals_total{reason}` (none sent, another
//! CA's, revoked, expired, not valid yet); a CRL that is another CA's of
//! the same name, whose root may not sign CRLs (`KeyUsage` without
//! `cRLSign`) or does not read is an error when configured or reloaded
//! (`TlsError::is_bad_crl`), and a reload that reads one keeps the lists
//! that worked, while an expired one is taken with a warning; an
//! intermediate CA's CRL that
//! only a handshake can check, found bad there, is counted as
//! `outcome="crl"`, not as the client's refusal; and the requests of one
//! HTTP/1.1 connection share one copy of its chain. Every wait is bounded
//! and waits on a condition (a counter, a byte), never on time alone.

use std::sync::Arc;

use megaconn::{ClientAuth, ClientCa, TlsConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;
use crate::common::tls::{handshake, Ca};
use crate::mtls::{
    alert_of, device, device_with, get_whoami, refused, required, says, Device, Gateway,
};

/// A CRL of `ca` revoking `serials`, valid until `next_update` (year,
/// month, day).
fn crl_of(
    ca: &Ca,
    serials: &[u64],
    next_update: (i32, u8, u8),
) -> rcgen::CertificateRevocationList {
    let (y, m, d) = next_update;
    rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2020, 1, 1),
        next_update: rcgen::date_time_ymd(y, m, d),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|&serial| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(serial),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca.cert, &ca.key)
    .unwrap()
}

/// A `nextUpdate` far ahead.
const FAR_FUTURE: (i32, u8, u8) = (2099, 1, 1);

/// `ca`'s roots with `crl_pem`, required.
fn with_crl(ca: &Ca, crl_pem: &str) -> ClientAuth {
    ClientAuth::Required(
        ClientCa::from_pem(ca.cert.pem().as_bytes()).with_crl_pem(crl_pem.as_bytes()),
    )
}

/// The refusals counted for `reason`.
fn refusals(gateway: &Gateway, reason: &str) -> u64 {
    let stats = gateway.handle.stats();
    stats
        .tls_client_cert_refusals
        .iter()
        .find(|(r, _)| *r == reason)
        .unwrap_or_else(|| panic!("no {reason} in {:?}", stats.tls_client_cert_refusals))
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_is_counted_by_its_reason() {
    let devices = Ca::named("Devices CA");
    let lost = device(&devices, "lost-1");
    let crl = crl_of(&devices, &[lost.serial], FAR_FUTURE);
    let gateway = Gateway::start(|tls| {
        tls.client_auth(with_crl(&devices, &crl.pem().unwrap()))
            .unwrap()
    })
    .await;
    let expired = device_with(&devices, "old-1", |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let early = device_with(&devices, "early-1", |p| {
        p.not_before = rcgen::date_time_ymd(2090, 1, 1);
        p.not_after = rcgen::date_time_ymd(2091, 1, 1);
    });
    let stranger = device(&Ca::named("Other CA"), "stranger-1");
    use rustls::AlertDescription as A;
    let cases: [(Option<&Device>, A, &str); 5] = [
        (None, A::CertificateRequired, "missing"),
        (Some(&stranger), A::UnknownCA, "unknown_ca"),
        (Some(&lost), A::CertificateRevoked, "revoked"),
        (Some(&expired), A::CertificateExpired, "expired"),
        (Some(&early), A::CertificateExpired, "not_yet_valid"),
    ];
    for (n, (device, alert, reason)) in cases.into_iter().enumerate() {
        assert_eq!(refused(&gateway, device).await, alert, "{reason}");
        gateway.wait_refusals(n as u64 + 1).await;
        assert_eq!(refusals(&gateway, reason), 1, "{reason}");
    }
    assert_eq!(refusals(&gateway, "bad"), 0);
    assert_eq!(gateway.handshakes("crl"), 0);
    assert_eq!(gateway.handshakes("failed"), 0);
    let metrics = gateway.handle.render_metrics();
    for (_, _, reason) in cases {
        let line = format!("megaconn_tls_client_cert_refusals_total{{reason=\"{reason}\"}} 1");
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in {metrics}"
        );
    }
    // A device of the fleet still gets in, and is counted nowhere here.
    let fine = device(&devices, "fine-1");
    assert_eq!(
        gateway.http1_whoami(Some(&fine)).await,
        says(&fine, "fine-1")
    );
    gateway.stop().await;
}

/// A self-signed CA named `cn` with `key`, whose `KeyUsage` is `usages`.
fn root_with_usages(cn: &str, usages: &[KeyUsagePurpose], key: KeyPair) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = usages.to_vec();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A server certificate to build configurations with.
fn server_tls() -> TlsConfig {
    Ca::named("Gateway CA").server(&["localhost"])
}

#[test]
fn a_bad_crl_is_an_error_when_configured() {
    let devices = Ca::named("Devices CA");
    let bad = |auth: ClientAuth| {
        let err = server_tls().client_auth(auth).map(|_| ()).unwrap_err();
        assert!(err.is_bad_crl(), "{err}");
        err.to_string()
    };
    // Expired (its nextUpdate is past): taken, with a warning, as webpki
    // takes it at handshakes; a CA late with its next list must not stop
    // a restart.
    let old = crl_of(&devices, &[], (2021, 1, 1));
    assert!(server_tls()
        .client_auth(with_crl(&devices, &old.pem().unwrap()))
        .is_ok());
    // Signed by a root whose KeyUsage lacks cRLSign: webpki would refuse
    // it at every handshake of that root's devices.
    // (rcgen signs CRLs only as a CA with CrlSign: the same name and key
    // with it signs, as such a CA's tooling would.)
    let key = KeyPair::generate().unwrap();
    let same_key = KeyPair::from_pem(&key.serialize_pem()).unwrap();
    let no_crl_sign = root_with_usages("Devices CA", &[KeyUsagePurpose::KeyCertSign], key);
    let signer = root_with_usages(
        "Devices CA",
        &[KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        same_key,
    );
    let crl = crl_of(&signer, &[], FAR_FUTURE);
    let text = bad(with_crl(&no_crl_sign, &crl.pem().unwrap()));
    assert!(
        text.contains("lacks cRLSign") && text.contains("reissue"),
        "{text}"
    );
    // Another CA's of the same name (the issuer a root's, the signature not).
    let impostor = Ca::named("Devices CA");
    let forged = crl_of(&impostor, &[], FAR_FUTURE);
    let text = bad(with_crl(&devices, &forged.pem().unwrap()));
    assert!(text.contains("does not verify its signature"), "{text}");
    // Not a CRL inside.
    let junk = "-----BEGIN X509 CRL-----\nMIIBAAAA\n-----END X509 CRL-----\n";
    let text = bad(with_crl(&devices, junk));
    assert!(text.contains("does not read"), "{text}");
    // The CA's own, current one is taken.
    let good = crl_of(&devices, &[7], FAR_FUTURE);
    server_tls()
        .client_auth(with_crl(&devices, &good.pem().unwrap()))
        .unwrap();
}

/// A reload that reads a bad CRL file fails and keeps the lists that
/// worked: the device they revoke is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_reads_a_bad_crl_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let crl_file = dir.path().join("devices.crl.pem");
    let devices = Ca::named("Devices CA");
    let lost = device(&devices, "lost-2");
    let current = crl_of(&devices, &[lost.serial], FAR_FUTURE);
    std::fs::write(&crl_file, current.pem().unwrap()).unwrap();
    let (path, ca_pem) = (crl_file.clone(), devices.cert.pem());
    let gateway = Gateway::start(move |tls| {
        tls.client_auth(ClientAuth::Required(
            ClientCa::from_pem(ca_pem.as_bytes()).with_crl_pem_file(&path),
        ))
        .unwrap()
    })
    .await;
    // Another CA's of the same name: its signature does not verify.
    let forged = crl_of(&Ca::named("Devices CA"), &[], FAR_FUTURE);
    std::fs::write(&crl_file, forged.pem().unwrap()).unwrap();
    let err = gateway.tls.reload().unwrap_err();
    assert!(err.is_bad_crl(), "{err}");
    assert!(
        err.to_string().contains(&crl_file.display().to_string()),
        "{err}"
    );
    assert_eq!(
        refused(&gateway, Some(&lost)).await,
        rustls::AlertDescription::CertificateRevoked
    );
    gateway.wait_refusals(1).await;
    assert_eq!(refusals(&gateway, "revoked"), 1);
    gateway.stop().await;
}

/// A CA that issues devices' certificates under `root`, its name `cn`.
fn intermediate(root: &Ca, cn: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &root.cert, &root.key).unwrap();
    Ca { cert, key }
}

/// A CRL naming an intermediate CA as its issuer but signed with another
/// key: the server cannot tell when configured (the intermediate is not
/// among its roots), and webpki refuses it at the handshake of a device
/// that CA issued. That is the server's list at fault: counted as
/// `outcome="crl"`, not as the device's refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermediates_bad_crl_found_at_a_handshake_is_not_the_clients_refusal() {
    let root = Ca::named("Fleet Root");
    let issuing = intermediate(&root, "Fleet Issuing CA");
    let impostor = Ca::named("Fleet Issuing CA");
    let forged = crl_of(&impostor, &[], FAR_FUTURE);
    let gateway = Gateway::start(|tls| {
        tls.client_auth(with_crl(&root, &forged.pem().unwrap()))
            .unwrap()
    })
    .await;
    let d = device(&issuing, "device-8");
    let mut roots = RootCertStore::empty();
    roots.add(gateway.server_ca.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![d.der.clone(), issuing.cert.der().clone()],
            d.key.clone_key(),
        )
        .unwrap();
    let tcp = TcpStream::connect(gateway.https).await.unwrap();
    let connected = handshake(tcp, Arc::new(config), "localhost").await;
    let e = match connected {
        Err(e) => e,
        Ok(mut tls) => get_whoami(&mut tls).await.expect_err("refused"),
    };
    assert!(alert_of(&e).is_some(), "an alert: {e:?}");
    common::wait_stats(&gateway.handle, "the handshake counted", |s| {
        s.tls_handshakes.iter().any(|(o, c)| *o == "crl" && *c == 1)
    })
    .await;
    assert_eq!(gateway.handshakes("client_cert"), 0);
    let stats = gateway.handle.stats();
    assert!(
        stats.tls_client_cert_refusals.iter().all(|(_, c)| *c == 0),
        "{:?}",
        stats.tls_client_cert_refusals
    );
    gateway.stop().await;
}

/// Reads `n` HTTP/1.1 responses off `io` (`buf`: bytes read ahead):
/// their bodies.
async fn read_bodies<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>, n: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for _ in 0..n {
        let response = common::read_response_buffered(io, buf, false).await;
        assert_eq!(response.status, 200);
        bodies.push(String::from_utf8(response.body).unwrap());
    }
    bodies
}

/// Two requests pipelined on one HTTP/1.1 connection see the same copy of
/// the client's chain (its address: each request's copy is kept alive by
/// the handler, so a fresh one could not reuse it). Across wake-ups too:
/// `mtls_wake.rs` (a new copy was made after each one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requests_of_one_connection_share_one_copy_of_the_chain() {
    let devices = Ca::named("Devices CA");
    let gateway = Gateway::start(required(&devices)).await;
    let d = device(&devices, "device-11");
    let mut tls = gateway
        .connect(gateway.https, "localhost", &[b"http/1.1"], Some(&d))
        .await
        .expect("handshake");
    let get = b"GET /chain HTTP/1.1\r\nHost: localhost\r\n\r\n";
    tls.write_all(&[&get[..], &get[..]].concat()).await.unwrap();
    let mut buf = Vec::new();
    let both = read_bodies(&mut tls, &mut buf, 2).await;
    assert_eq!(both[0], both[1], "one copy for both requests");
    gateway.stop().await;
}
