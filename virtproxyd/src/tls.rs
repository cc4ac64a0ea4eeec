//! The TLS server side of remote access: the server's rustls configuration from the PKI files
//! (libvirt's `key_file`, `cert_file`, `ca_file`, defaulting to the layout in [`rvirt::tls`]),
//! mutual authentication (a client certificate signed by the CA is mandatory), and libvirt's
//! `tls_allowed_dn_list`: the client certificate's subject, written as libvirt writes it
//! (`C=GB,ST=London,L=London,O=Red Hat,CN=client`, attributes in certificate order), must match
//! one of the patterns, where `*` matches any run of characters and `?` one character (the
//! access policy's [`glob`], GLib's `g_pattern_match_simple` as libvirt uses it).
//!
//! Refusals happen in the handshake, with the TLS alert that lets the client say why: a
//! certificate from an unknown CA gets `unknown_ca`, a subject not in the list `access_denied`,
//! no certificate `certificate_required`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rvirt::paths::Mode;
use rvirt::tls::PkiPaths;
use rvirt_daemon::config::RemoteConfig;
use rvirt_daemon::policy::glob;

/// The server's PKI files: the layout's defaults for `mode`, each replaced by the configuration's
/// `ca_file`, `cert_file`, `key_file` when set (used as written, not under `RVIRT_ROOT`).
pub fn server_paths(config: &RemoteConfig, mode: Mode) -> PkiPaths {
    let defaults = PkiPaths::server(mode);
    let pick = |configured: &str, default: PathBuf| {
        if configured.is_empty() {
            default
        } else {
            PathBuf::from(configured)
        }
    };
    PkiPaths {
        ca: pick(&config.ca_file, defaults.ca),
        cert: pick(&config.cert_file, defaults.cert),
        key: pick(&config.key_file, defaults.key),
    }
}

fn unreadable(key: &str, what: &str, path: &Path, cause: impl std::fmt::Display) -> String {
    format!(
        "cannot read the {what} '{}' ({cause}): install it there or set {key} in virtproxyd.conf (see docs/proxy.md)",
        path.display()
    )
}

/// Every PEM object of type `T` in `path` (the file named by configuration key `key`); none is
/// an error saying `no PEM <kind> in it`.
fn read_pem<T: PemObject>(key: &str, what: &str, kind: &str, path: &Path) -> Result<Vec<T>, String> {
    let objects = T::pem_file_iter(path)
        .map_err(|e| unreadable(key, what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(key, what, path, e))?;
    if objects.is_empty() {
        return Err(unreadable(key, what, path, format!("no PEM {kind} in it")));
    }
    Ok(objects)
}

fn read_certs(key: &str, what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    read_pem(key, what, "certificate", path)
}

/// The revocation list to check client certificates against: `crl_file` when set, else
/// `cacrl.pem` beside the CA certificate when it exists (libvirt's layout), else none.
pub fn crl_path(config: &RemoteConfig, paths: &PkiPaths) -> Option<PathBuf> {
    if !config.crl_file.is_empty() {
        return Some(PathBuf::from(&config.crl_file));
    }
    let default = paths.ca.with_file_name("cacrl.pem");
    default.exists().then_some(default)
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    read_pem("crl_file", "certificate revocation list", "X509 CRL", path)
}

/// The TLS server configuration for `config` in `mode`: server certificate and key, mandatory
/// client certificates signed by the CA, the DN allow-list, HTTP/2 by ALPN.
pub fn server_config(config: &RemoteConfig, mode: Mode) -> Result<Arc<rustls::ServerConfig>, String> {
    let paths = server_paths(config, mode);
    let provider = rvirt::tls::client::provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs("ca_file", "CA certificate", &paths.ca)? {
        roots
            .add(cert)
            .map_err(|e| unreadable("ca_file", "CA certificate", &paths.ca, e))?;
    }
    let mut builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
    if let Some(crl) = crl_path(config, &paths) {
        builder = builder.with_crls(read_crls(&crl)?);
    }
    let webpki = builder
        .build()
        .map_err(|e| format!("cannot use the CA certificate '{}': {e}", paths.ca.display()))?;
    let verifier: Arc<dyn ClientCertVerifier> = match &config.tls_allowed_dn_list {
        Some(allowed) => Arc::new(AllowListVerifier {
            inner: webpki,
            allowed: allowed.clone(),
        }),
        None => webpki,
    };
    let chain = read_certs("cert_file", "server certificate", &paths.cert)?;
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .map_err(|e| unreadable("key_file", "server key", &paths.key, e))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "the server certificate '{}' and key '{}' do not go together ({e}): install the key the certificate was made for",
                paths.cert.display(),
                paths.key.display()
            )
        })?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(server))
}

/// Checks the client certificate against the CA (the inner verifier), then its subject against
/// `tls_allowed_dn_list`.
#[derive(Debug)]
struct AllowListVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for AllowListVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let Some(subject) = subject_dn(end_entity) else {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ));
        };
        if self.allowed.iter().any(|pattern| glob(pattern, &subject)) {
            Ok(verified)
        } else {
            tracing::warn!(
                subject,
                "client certificate refused: its subject is not in tls_allowed_dn_list"
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One DER element: tag, contents, and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The dotted form of an OID's contents.
fn oid_text(contents: &[u8]) -> Option<String> {
    let (&first, rest) = contents.split_first()?;
    let mut parts = vec![u64::from(first / 40).min(2), 0];
    parts[1] = u64::from(first) - parts[0] * 40;
    let mut value: u64 = 0;
    for &b in rest {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            parts.push(value);
            value = 0;
        }
    }
    Some(parts.iter().map(u64::to_string).collect::<Vec<_>>().join("."))
}

/// The short names libvirt (GnuTLS) prints for common attributes.
fn attribute_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "EMAIL",
        _ => return None,
    })
}

/// An attribute value as text, RFC 4514-escaped; `#hex` of the whole element for types that are
/// not strings.
fn value_text(tag: u8, contents: &[u8], element: &[u8]) -> String {
    let text = match tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString
        0x0c | 0x13 | 0x16 | 0x12 | 0x1a => String::from_utf8_lossy(contents).into_owned(),
        // TeletexString: taken as Latin-1
        0x14 => contents.iter().map(|b| char::from(*b)).collect(),
        // BMPString: UTF-16BE
        0x1e => {
            let units: Vec<u16> = contents
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => {
            return format!(
                "#{}",
                element.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
        }
    };
    let mut out = String::with_capacity(text.len());
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The subject DN of a DER certificate in libvirt's form: attributes in certificate order,
/// `NAME=value` joined by `,` (`+` within a multi-valued RDN). `None` when it does not parse.
pub fn subject_dn(cert: &[u8]) -> Option<String> {
    let (0x30, certificate, _) = der_element(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = der_element(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] version
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = der_element(rest)?.2;
    }
    let (0x30, mut name, _) = der_element(rest)? else {
        return None;
    };
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (0x31, mut set, next) = der_element(name)? else {
            return None;
        };
        name = next;
        let mut attributes = Vec::new();
        while !set.is_empty() {
            let (0x30, mut pair, next) = der_element(set)? else {
                return None;
            };
            set = next;
            let (0x06, oid, value) = der_element(pair)? else {
                return None;
            };
            pair = value;
            let (tag, contents, _) = der_element(pair)?;
            let element_len = pair.len() - der_element(pair)?.2.len();
            let oid = oid_text(oid)?;
            let name = attribute_name(&oid).map_or(oid.clone(), str::to_owned);
            attributes.push(format!(
                "{name}={}",
                value_text(tag, contents, &pair[..element_len])
            ));
        }
        rdns.push(attributes.join("+"));
    }
    Some(rdns.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_patterns_use_libvirts_wildcards() {
        assert!(glob(
            "C=GB,O=Red Hat,CN=*",
            "C=GB,O=Red Hat,CN=client.example.org"
        ));
        assert!(glob("C=??,CN=a*b", "C=GB,CN=axxb"));
        assert!(!glob("CN=client", "CN=client2"));
    }

    #[test]
    fn subject_is_written_in_certificate_order_with_short_names() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "GB");
        dn.push(rcgen::DnType::OrganizationName, "Red Hat, Inc.");
        dn.push(rcgen::DnType::CommonName, "client");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            subject_dn(cert.der()).as_deref(),
            Some("C=GB,O=Red Hat\\, Inc.,CN=client")
        );
    }

    #[test]
    fn garbage_is_no_subject() {
        assert_eq!(subject_dn(b""), None);
        assert_eq!(subject_dn(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(subject_dn(&[0x30, 0x02, 0x30, 0x00]), None);
    }
}
