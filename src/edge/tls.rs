//! TLS termination: certificate pairs chosen by SNI, reloaded without dropping a connection.
//!
//! Each TLS listener has one [`TlsEndpoint`]: a front `SslAcceptor` that every handshake
//! starts on, and the [`CertificateSet`] serving now behind an `ArcSwap`. OpenSSL calls the
//! front context's server-name callback for every ClientHello (with or without SNI); the
//! callback picks the pair from the current set and moves the connection to that pair's
//! context, whose ALPN callback then picks `h2` or `http/1.1`. A reload builds a whole new
//! set first and swaps it only when every pair is good; handshakes in flight keep the
//! context they were given. Sessions (the server-side cache and the ticket keys) live on the
//! front context, so resumption survives certificate reloads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    AlpnError, NameType, SniError, SslAcceptor, SslAcceptorBuilder, SslContext, SslMethod,
    SslVersion,
};
use openssl::x509::X509;
use prometheus::IntCounter;

use crate::config::{CertificateFiles, Listener, ListenerKind, TlsListener, TlsVersion};
use crate::diagnostics::{Diagnostics, Severity};
use crate::metrics::Metrics;

/// A certificate expiring within this is warned about by `graygate check`, at start and on
/// reload.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);

/// A pair that cannot serve, with the file at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateError {
    /// The certificate or key file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for CertificateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

/// One loaded, checked certificate pair.
pub struct Certificate {
    /// The `cert` path as written in the config.
    pub label: String,
    /// The DNS names it serves (subjectAltName, or the common name without any), lowercase;
    /// `*.example.com` covers one label.
    pub names: Vec<String>,
    /// notAfter as a Unix timestamp.
    pub not_after: i64,
    /// The serial number in hex.
    pub serial: String,
    context: SslContext,
}

/// The pairs of one listener, with the lookup from server name to pair.
pub struct CertificateSet {
    certificates: Vec<Certificate>,
    /// Exact DNS name -> index (the first pair naming it wins).
    exact: HashMap<String, usize>,
    /// `example.com` of `*.example.com` -> index.
    wildcard: HashMap<String, usize>,
    /// A digest of every file's bytes: an unchanged set is not rebuilt.
    fingerprint: u64,
}

impl CertificateSet {
    /// Reads and checks every pair of `settings`; every problem is returned, with its file.
    pub fn load(settings: &TlsListener) -> Result<CertificateSet, Vec<CertificateError>> {
        let mut errors = Vec::new();
        let mut certificates = Vec::new();
        let mut fingerprint = xxhash_rust::xxh64::Xxh64::new(0);
        for files in &settings.certificates {
            match load_pair(files, settings) {
                Ok((certificate, bytes)) => {
                    fingerprint.update(&bytes);
                    certificates.push(certificate);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, certificate) in certificates.iter().enumerate() {
            for name in &certificate.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        Ok(CertificateSet {
            certificates,
            exact,
            wildcard,
            fingerprint: fingerprint.digest(),
        })
    }

    /// The pair serving `server_name`: an exact name, else a wildcard one label up, else the
    /// first pair. The `bool` says whether a name matched.
    pub fn select(&self, server_name: Option<&str>) -> (&Certificate, bool) {
        let found = server_name.and_then(|name| {
            let name = name.trim_end_matches('.');
            let lower;
            let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = name.to_ascii_lowercase();
                lower.as_str()
            } else {
                name
            };
            self.exact.get(name).copied().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        (&self.certificates[found.unwrap_or(0)], found.is_some())
    }

    /// The pairs, in the order written.
    pub fn certificates(&self) -> &[Certificate] {
        &self.certificates
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(path).map_err(|e| CertificateError {
        file: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })
}

/// Loads one pair; also returns the bytes read (for the set's fingerprint).
fn load_pair(
    files: &CertificateFiles,
    settings: &TlsListener,
) -> Result<(Certificate, Vec<u8>), CertificateError> {
    let cert_error = |message: String| CertificateError {
        file: files.cert.clone(),
        message,
    };
    let key_error = |message: String| CertificateError {
        file: files.key.clone(),
        message,
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let chain = X509::stack_from_pem(&cert_pem)
        .map_err(|e| cert_error(format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_error("holds no PEM certificate".into()));
    };
    // An empty passphrase: an encrypted key fails here instead of prompting on a terminal.
    let key = PKey::private_key_from_pem_passphrase(&key_pem, b"")
        .map_err(|_| key_error("not an unencrypted PEM private key (PKCS#8, RSA or EC)".into()))?;
    let matches = leaf
        .public_key()
        .map(|public| public.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err(key_error(format!(
            "this key does not belong to the certificate {}",
            files.cert.display()
        )));
    }
    let not_after = unix_time(leaf.not_after()).map_err(cert_error)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if not_after <= now {
        return Err(cert_error(format!(
            "expired on {}",
            humantime::format_rfc3339_seconds(to_system_time(not_after))
        )));
    }
    let names = dns_names(leaf);
    if names.is_empty() {
        return Err(cert_error(
            "names no DNS name (no subjectAltName DNS entry and no common name)".into(),
        ));
    }
    let serial = leaf
        .serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
        .unwrap_or_default();
    let context = pair_context(settings, &chain, &key)
        .map_err(|e| cert_error(format!("OpenSSL refused the pair: {e}")))?;
    let mut bytes = cert_pem;
    bytes.extend_from_slice(&key_pem);
    Ok((
        Certificate {
            label: files.label.clone(),
            names,
            not_after,
            serial,
            context,
        },
        bytes,
    ))
}

/// The certificate's DNS names, lowercase: subjectAltName DNS entries, else the common name.
fn dns_names(cert: &X509) -> Vec<String> {
    let from_san: Vec<String> = cert
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.dnsname())
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default();
    if !from_san.is_empty() {
        return from_san;
    }
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .filter_map(|e| e.data().to_string().ok().map(|s| s.to_ascii_lowercase()))
        .collect()
}

fn unix_time(time: &openssl::asn1::Asn1TimeRef) -> Result<i64, String> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).map_err(|e| e.to_string())?;
    let diff = epoch
        .diff(time)
        .map_err(|e| format!("unreadable notAfter: {e}"))?;
    Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

fn to_system_time(unix: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64)
}

/// The settings every context of a listener shares: versions, ALPN.
fn acceptor_builder(settings: &TlsListener) -> Result<SslAcceptorBuilder, String> {
    // Mozilla's intermediate profile (TLS 1.2 and 1.3, forward-secret AEAD suites).
    let mut builder =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(|e| e.to_string())?;
    let min = match settings.min_version {
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
    };
    builder
        .set_min_proto_version(Some(min))
        .map_err(|e| e.to_string())?;
    if settings.http2 {
        builder.set_alpn_select_callback(|_, offered| {
            openssl::ssl::select_next_proto(b"\x02h2\x08http/1.1", offered).ok_or(AlpnError::NOACK)
        });
    } else {
        builder.set_alpn_select_callback(|_, offered| {
            openssl::ssl::select_next_proto(b"\x08http/1.1", offered).ok_or(AlpnError::NOACK)
        });
    }
    Ok(builder)
}

/// The context of one pair: the listener's settings with this chain and key.
fn pair_context(
    settings: &TlsListener,
    chain: &[X509],
    key: &PKey<Private>,
) -> Result<SslContext, String> {
    let mut builder = acceptor_builder(settings)?;
    let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
    builder.set_certificate(leaf).map_err(|e| e.to_string())?;
    for cert in intermediates {
        builder
            .add_extra_chain_cert(cert.clone())
            .map_err(|e| e.to_string())?;
    }
    builder.set_private_key(key).map_err(|e| e.to_string())?;
    builder.check_private_key().map_err(|e| e.to_string())?;
    Ok(builder.build().into_context())
}

/// One TLS listener's acceptor and certificates.
pub struct TlsEndpoint {
    listener: Arc<str>,
    settings: TlsListener,
    current: Arc<ArcSwap<CertificateSet>>,
    acceptor: SslAcceptor,
}

/// What a certificate reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificatesReloaded {
    /// New pairs serve new handshakes.
    Swapped,
    /// Every file is as it was.
    Unchanged,
}

impl TlsEndpoint {
    /// Loads `settings`' pairs for listener `listener`; `unmatched` counts handshakes whose
    /// server name no pair covers.
    pub fn new(
        listener: Arc<str>,
        settings: &TlsListener,
        unmatched: IntCounter,
    ) -> Result<TlsEndpoint, Vec<CertificateError>> {
        let set = CertificateSet::load(settings)?;
        let first = settings.certificates.first().map(|c| c.cert.clone());
        let front_error = |message: String| {
            vec![CertificateError {
                file: first.clone().unwrap_or_default(),
                message,
            }]
        };
        let current = Arc::new(ArcSwap::from_pointee(set));
        let mut builder = acceptor_builder(settings).map_err(front_error)?;
        // The front context holds the first pair at start, so a certificate is there even
        // before the callback below moves the connection to the pair serving now.
        {
            let set = current.load();
            let (first, _) = set.select(None);
            let cert = first.context.certificate();
            let key = first.context.private_key();
            if let (Some(cert), Some(key)) = (cert, key) {
                builder
                    .set_certificate(cert)
                    .and_then(|()| builder.set_private_key(key))
                    .map_err(|e| front_error(e.to_string()))?;
            }
        }
        let serving = Arc::clone(&current);
        builder.set_servername_callback(move |ssl, _alert| {
            let set = serving.load();
            let name = ssl.servername(NameType::HOST_NAME);
            let (certificate, matched) = set.select(name);
            if name.is_some() && !matched {
                unmatched.inc();
            }
            ssl.set_ssl_context(&certificate.context)
                .map_err(|_| SniError::ALERT_FATAL)
        });
        Ok(TlsEndpoint {
            listener,
            settings: settings.clone(),
            current,
            acceptor: builder.build(),
        })
    }

    /// The acceptor every handshake of this listener starts on.
    pub fn acceptor(&self) -> &SslAcceptor {
        &self.acceptor
    }

    /// The listener's name.
    pub fn listener(&self) -> &Arc<str> {
        &self.listener
    }

    /// Every certificate and key file it reads.
    pub fn files(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.settings
            .certificates
            .iter()
            .flat_map(|c| [c.cert.clone(), c.key.clone()])
    }

    /// The pairs serving now.
    pub fn certificates(&self) -> arc_swap::Guard<Arc<CertificateSet>> {
        self.current.load()
    }

    /// Re-reads every pair; swaps them in only when all are good, else the old ones keep
    /// serving.
    pub fn reload(&self) -> Result<CertificatesReloaded, Vec<CertificateError>> {
        let set = CertificateSet::load(&self.settings)?;
        if set.fingerprint == self.current.load().fingerprint {
            return Ok(CertificatesReloaded::Unchanged);
        }
        self.current.store(Arc::new(set));
        Ok(CertificatesReloaded::Swapped)
    }
}

/// The TLS endpoint of each listener (`None` for plain ones), in the config's order.
pub type ListenerEndpoints = Vec<Option<Arc<TlsEndpoint>>>;

/// The TLS endpoint of each listener (`None` for plain ones), in the config's order, with
/// the warnings about pairs close to expiry; or every pair's problem, with its file.
pub fn endpoints(
    listeners: &[Listener],
    metrics: &Metrics,
) -> Result<(ListenerEndpoints, Diagnostics), Diagnostics> {
    let mut errors = Diagnostics::default();
    let mut warnings = Diagnostics::default();
    let mut endpoints = Vec::with_capacity(listeners.len());
    for listener in listeners {
        let ListenerKind::Tls(settings) = &listener.kind else {
            endpoints.push(None);
            continue;
        };
        let unmatched = metrics
            .tls_sni_unmatched
            .with_label_values(&[&*listener.name])
            .clone();
        match TlsEndpoint::new(Arc::clone(&listener.name), settings, unmatched) {
            Ok(endpoint) => {
                endpoint.record_expiry(metrics);
                for (file, message) in endpoint.expiry_warnings() {
                    warnings.push(Severity::Warning, &Arc::from(file), None, message);
                }
                endpoints.push(Some(Arc::new(endpoint)));
            }
            Err(problems) => {
                for problem in problems {
                    errors.push(
                        Severity::Error,
                        &Arc::from(problem.file.as_path()),
                        None,
                        format!("listener {}: {}", listener.name, problem.message),
                    );
                }
            }
        }
    }
    if errors.has_errors() {
        Err(errors)
    } else {
        Ok((endpoints, warnings))
    }
}

impl TlsEndpoint {
    /// Sets the expiry gauge of every pair serving now.
    pub fn record_expiry(&self, metrics: &Metrics) {
        for certificate in self.certificates().certificates() {
            metrics
                .tls_certificate_expiry
                .with_label_values(&[&*self.listener, &certificate.label])
                .set(certificate.not_after);
        }
    }

    /// (certificate file, message) for every pair serving now that expires within
    /// [`EXPIRY_WARNING`].
    pub fn expiry_warnings(&self) -> Vec<(PathBuf, String)> {
        let now = std::time::SystemTime::now();
        let set = self.certificates();
        set.certificates()
            .iter()
            .zip(&self.settings.certificates)
            .filter_map(|(certificate, files)| {
                let expires = to_system_time(certificate.not_after);
                let left = expires.duration_since(now).unwrap_or_default();
                (left < EXPIRY_WARNING).then(|| {
                    (
                        files.cert.clone(),
                        format!(
                            "listener {}: the certificate expires in {} (on {})",
                            self.listener,
                            humantime::format_duration(std::time::Duration::from_secs(
                                left.as_secs() / 3600 * 3600
                            )),
                            humantime::format_rfc3339_seconds(expires)
                        ),
                    )
                })
            })
            .collect()
    }
}
