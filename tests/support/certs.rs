//! Test certificates made on the spot with openssl: a CA, server certificates it signs, and
//! self-signed ones. Nothing is read from or left on disk unless a test writes a PEM itself.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509};

/// A certificate and its private key.
pub struct Identity {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Identity {
    /// The certificate in PEM.
    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().expect("certificate to PEM")
    }
}

/// A certificate authority that signs server certificates.
pub struct TestCa {
    pub identity: Identity,
}

fn p256_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("PKey")
}

/// A certificate for `cn` valid from today for 30 days, with a random serial; the subject
/// name is returned too (the issuer of a self-signed certificate).
fn builder(cn: &str, key: &PKey<Private>) -> (X509Builder, X509Name) {
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_text("CN", cn).expect("CN");
    let name = name.build();
    let mut b = X509Builder::new().expect("X509 builder");
    b.set_version(2).expect("v3");
    let mut serial = BigNum::new().expect("bignum");
    serial
        .rand(64, MsbOption::MAYBE_ZERO, false)
        .expect("serial");
    b.set_serial_number(&serial.to_asn1_integer().expect("serial"))
        .expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_pubkey(key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("not before");
    b.set_not_after(&Asn1Time::days_from_now(30).expect("time"))
        .expect("not after");
    (b, name)
}

fn add_server_names(b: &mut X509Builder, dns: &str) {
    let san = SubjectAlternativeName::new()
        .dns(dns)
        .build(&b.x509v3_context(None, None))
        .expect("SAN");
    b.append_extension(san).expect("SAN");
}

impl TestCa {
    /// A new CA called `name`.
    pub fn new(name: &str) -> TestCa {
        let key = p256_key();
        let (mut b, subject) = builder(name, &key);
        b.set_issuer_name(&subject).expect("issuer");
        b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("bc");
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .expect("ku"),
        )
        .expect("ku");
        b.sign(&key, MessageDigest::sha256()).expect("sign");
        TestCa {
            identity: Identity {
                cert: b.build(),
                key,
            },
        }
    }

    /// The CA certificate in PEM (a `tls.ca` file).
    pub fn pem(&self) -> Vec<u8> {
        self.identity.cert_pem()
    }

    /// A server certificate for the DNS name `dns`, signed by this CA.
    pub fn issue(&self, dns: &str) -> Identity {
        let key = p256_key();
        let (mut b, _) = builder(dns, &key);
        b.set_issuer_name(self.identity.cert.subject_name())
            .expect("issuer");
        add_server_names(&mut b, dns);
        b.sign(&self.identity.key, MessageDigest::sha256())
            .expect("sign");
        Identity {
            cert: b.build(),
            key,
        }
    }
}

/// A self-signed server certificate for the DNS name `dns`.
pub fn self_signed(dns: &str) -> Identity {
    let key = p256_key();
    let (mut b, subject) = builder(dns, &key);
    b.set_issuer_name(&subject).expect("issuer");
    add_server_names(&mut b, dns);
    b.sign(&key, MessageDigest::sha256()).expect("sign");
    Identity {
        cert: b.build(),
        key,
    }
}
