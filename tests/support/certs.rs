//! Certificates made in the test: a test CA and leaf certificates it signs, with chosen DNS
//! names, serial numbers and lifetimes, written as PEM files.

use std::path::{Path, PathBuf};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("PKey")
}

fn name(common_name: &str) -> openssl::x509::X509Name {
    let mut name = X509NameBuilder::new().expect("name builder");
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)
        .expect("CN");
    name.build()
}

/// An X.509 v3 builder for `key` named `subject`, issued by `issuer`, with `serial`, valid
/// from now for `days`: what every certificate here starts from.
fn builder(
    key: &PKey<Private>,
    subject: &openssl::x509::X509NameRef,
    issuer: &openssl::x509::X509NameRef,
    serial: u32,
    days: u32,
) -> X509Builder {
    let mut builder = X509Builder::new().expect("builder");
    builder.set_version(2).expect("v3");
    let serial = BigNum::from_u32(serial).and_then(|b| Asn1Integer::from_bn(&b));
    builder
        .set_serial_number(&serial.expect("serial"))
        .expect("serial");
    builder.set_subject_name(subject).expect("subject");
    builder.set_issuer_name(issuer).expect("issuer");
    builder.set_pubkey(key).expect("pubkey");
    builder
        .set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("not before");
    builder
        .set_not_after(&Asn1Time::days_from_now(days).expect("time"))
        .expect("not after");
    builder
}

/// A certificate authority that exists only in this test.
pub struct TestCa {
    /// Its certificate.
    pub cert: X509,
    key: PKey<Private>,
}

/// A leaf certificate and its key, as PEM.
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM (PKCS#8).
    pub key_pem: Vec<u8>,
    /// The serial number.
    pub serial: u32,
}

impl Issued {
    /// Writes `{stem}.crt` and `{stem}.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

impl TestCa {
    /// A new CA, valid for a year.
    pub fn new() -> TestCa {
        let key = new_key();
        let subject = name("graygate test CA");
        let mut builder = builder(&key, &subject, &subject, 1, 365);
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("basic constraints");
        builder
            .append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .expect("ku"),
            )
            .expect("key usage");
        builder.sign(&key, MessageDigest::sha256()).expect("sign");
        TestCa {
            cert: builder.build(),
            key,
        }
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> Vec<u8> {
        self.cert.to_pem().expect("CA PEM")
    }

    /// A server certificate for `dns_names` with `serial`, valid for `days` from now.
    pub fn issue(&self, dns_names: &[&str], serial: u32, days: u32) -> Issued {
        let key = new_key();
        let subject = name(dns_names[0]);
        let mut builder = builder(&key, &subject, self.cert.subject_name(), serial, days);
        let mut san = SubjectAlternativeName::new();
        for dns in dns_names {
            san.dns(dns);
        }
        let san = san
            .build(&builder.x509v3_context(Some(&self.cert), None))
            .expect("subjectAltName");
        builder.append_extension(san).expect("san");
        builder
            .sign(&self.key, MessageDigest::sha256())
            .expect("sign");
        Issued {
            cert_pem: builder.build().to_pem().expect("PEM"),
            key_pem: key.private_key_to_pem_pkcs8().expect("key PEM"),
            serial,
        }
    }
}

/// What an HTTPS request over [`https_request`] saw of the connection.
pub struct TlsAnswer {
    /// The response.
    pub response: super::Response,
    /// The serial number of the certificate the server presented.
    pub serial: u32,
    /// The DNS names of that certificate.
    pub names: Vec<String>,
    /// The negotiated protocol version, e.g. `TLSv1.3`.
    pub version: String,
}

/// A TLS client trusting `ca` (and nothing else) that offers ALPN `http/1.1` only.
pub fn connector(ca: &X509) -> openssl::ssl::SslConnector {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut builder = SslConnector::builder(SslMethod::tls()).expect("connector");
    let mut store = openssl::x509::store::X509StoreBuilder::new().expect("store");
    store.add_cert(ca.clone()).expect("CA");
    builder
        .set_verify_cert_store(store.build())
        .expect("verify store");
    builder.set_verify(SslVerifyMode::PEER);
    builder.set_alpn_protos(b"\x08http/1.1").expect("alpn");
    builder.build()
}

/// Sends `raw` over TLS to `addr` with SNI `server_name` (none when `None`; the name is then
/// not verified either), verifying the chain against `ca`, and reads one response.
pub fn https_request(
    addr: std::net::SocketAddr,
    ca: &X509,
    server_name: Option<&str>,
    raw: &[u8],
) -> std::io::Result<TlsAnswer> {
    use std::io::Write as _;
    let timeout = std::time::Duration::from_secs(5);
    let tcp = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut config = connector(ca).configure().expect("configure");
    let domain = match server_name {
        Some(name) => name,
        None => {
            config.set_use_server_name_indication(false);
            config.set_verify_hostname(false);
            "unused"
        }
    };
    let mut tls = config
        .connect(domain, tcp)
        .map_err(|e| std::io::Error::other(format!("TLS handshake: {e}")))?;
    let peer = tls
        .ssl()
        .peer_certificate()
        .ok_or_else(|| std::io::Error::other("no peer certificate"))?;
    let serial = peer
        .serial_number()
        .to_bn()
        .ok()
        .and_then(|bn| bn.to_dec_str().ok().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let names = peer
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let version = tls.ssl().version_str().to_string();
    tls.write_all(raw)?;
    tls.flush()?;
    let response = super::read_response(std::io::BufReader::new(tls), false)?;
    Ok(TlsAnswer {
        response,
        serial,
        names,
        version,
    })
}

/// A self-signed server certificate for `dns` (no CA knows it), valid for 30 days.
pub fn self_signed(dns: &str) -> Issued {
    let key = new_key();
    let subject = name(dns);
    let mut builder = builder(&key, &subject, &subject, 7, 30);
    let san = SubjectAlternativeName::new()
        .dns(dns)
        .build(&builder.x509v3_context(None, None))
        .expect("subjectAltName");
    builder.append_extension(san).expect("san");
    builder.sign(&key, MessageDigest::sha256()).expect("sign");
    Issued {
        cert_pem: builder.build().to_pem().expect("PEM"),
        key_pem: key.private_key_to_pem_pkcs8().expect("key PEM"),
        serial: 7,
    }
}
