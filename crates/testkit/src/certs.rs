//! Certificates and keys for a local API server, generated in process with `rcgen`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Names the serving certificate is valid for: loopback (where the API server listens), the
/// namespace's host address, and the in-cluster service names.
const SERVING_NAMES: &[&str] = &[
    "127.0.0.1",
    crate::netns::HOST_IP,
    "10.96.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// Generating or writing the certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Writes into `dir`: `ca.crt`, `apiserver.crt`, `apiserver.key` (signed by the CA) and
/// `sa.key` / `sa.pub` (the service-account token signing key pair, ECDSA P-256).
pub fn write_all(dir: &Path) -> Result<(), CertError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "zeroscale-testkit-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let key = KeyPair::generate()?;
    let names: Vec<String> = SERVING_NAMES.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer)?;

    let sa_key = KeyPair::generate()?;
    let write = |name: &str, contents: String| {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|source| CertError::Write { path, source })
    };
    write("ca.crt", ca_cert.pem())?;
    write("apiserver.crt", cert.pem())?;
    write("apiserver.key", key.serialize_pem())?;
    write("sa.key", sa_key.serialize_pem())?;
    write("sa.pub", sa_key.public_key_pem())?;
    Ok(())
}

/// Writes a self-signed serving certificate for `names` into `dir` as `tls.crt` and `tls.key`,
/// the layout controller-runtime's webhook server reads (KServe's manager needs one to start;
/// nothing calls it, as no webhook configuration is installed).
pub fn write_self_signed(dir: &Path, names: &[&str]) -> Result<(), CertError> {
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key)?;
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    for (name, contents) in [("tls.crt", cert.pem()), ("tls.key", key.serialize_pem())] {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|source| CertError::Write { path, source })?;
    }
    Ok(())
}
