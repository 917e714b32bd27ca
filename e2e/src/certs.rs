//! The control plane's PKI: a throwaway CA and every certificate and key that
//! kube-apiserver, kube-controller-manager and the test clients need.
//!
//! Everything is generated fresh for each control plane, so nothing here is a
//! secret worth protecting beyond file permissions, and nothing outlives the
//! state directory. All keys are ECDSA P-256: kube-apiserver accepts them for
//! serving, client authentication and service-account token signing alike, and
//! they are much faster to generate than RSA keys, which matters for start-up time.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

/// The in-cluster IP of the `kubernetes` Service: the first address of the
/// service CIDR the control plane is started with (10.0.0.0/24). In-cluster
/// clients verify the serving certificate against it.
pub const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";

/// Subject alternative names of the apiserver serving certificate: how the test
/// process reaches it (loopback) plus every name an in-cluster client may use.
const APISERVER_SANS: &[&str] = &[
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    KUBERNETES_SERVICE_IP,
];

/// Common name of the throwaway CA.
const CA_NAME: &str = "drover-e2e-ca";

/// Common name of the admin identity written into the test kubeconfig.
pub const ADMIN_USER: &str = "drover-admin";
/// `system:masters` is bound to cluster-admin by the bootstrap RBAC policy and
/// bypasses authorization entirely, so the harness never depends on RBAC setup.
pub const ADMIN_GROUP: &str = "system:masters";
/// The identity the bootstrap RBAC policy grants kube-controller-manager's rights to.
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its private key, both as written to disk and as PEM text
/// (kubeconfigs embed the PEM rather than pointing at files, so they stay valid
/// when copied elsewhere).
#[derive(Debug, Clone)]
pub struct CertAndKey {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Every file of the control plane's PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: CertAndKey,
    /// Serving certificate of kube-apiserver.
    pub apiserver: CertAndKey,
    /// Client certificate of the admin identity (`system:masters`).
    pub admin: CertAndKey,
    /// Client certificate of kube-controller-manager.
    pub controller_manager: CertAndKey,
    /// PKCS#8 private key that signs service-account tokens
    /// (kube-apiserver `--service-account-signing-key-file`,
    /// kube-controller-manager `--service-account-private-key-file`).
    pub service_account_key: PathBuf,
    /// Public half of `service_account_key`, which kube-apiserver verifies tokens with
    /// (`--service-account-key-file`).
    pub service_account_public_key: PathBuf,
}

/// Generates a complete PKI and writes it into `dir` (created if needed),
/// replacing any files a previous run left there.
pub fn generate(dir: &Path) -> Result<Pki, CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;

    let ca_key = new_key("the CA key")?;
    let ca_key_pem = ca_key.serialize_pem();
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = subject(CA_NAME, None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca =
        CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|source| CertError::Generate {
            what: "the CA certificate",
            source,
        })?;
    let ca_files = write_pair(dir, "ca", &ca.pem(), &ca_key_pem)?;

    let sans: Vec<String> = APISERVER_SANS.iter().map(|s| (*s).to_owned()).collect();
    let mut serving = CertificateParams::new(sans).map_err(|source| CertError::Generate {
        what: "the apiserver serving certificate's names",
        source,
    })?;
    serving.distinguished_name = subject("kube-apiserver", None);
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let apiserver = issue(
        dir,
        "apiserver",
        "the apiserver serving certificate",
        serving,
        &ca,
    )?;

    let admin = issue(
        dir,
        "admin",
        "the admin client certificate",
        client_params(ADMIN_USER, Some(ADMIN_GROUP)),
        &ca,
    )?;
    let controller_manager = issue(
        dir,
        "kube-controller-manager",
        "the kube-controller-manager client certificate",
        client_params(CONTROLLER_MANAGER_USER, None),
        &ca,
    )?;

    let sa_key = new_key("the service-account signing key")?;
    let service_account_key = dir.join("service-account.key");
    let service_account_public_key = dir.join("service-account.pub");
    write_file(&service_account_key, &sa_key.serialize_pem(), true)?;
    write_file(&service_account_public_key, &sa_key.public_key_pem(), false)?;

    Ok(Pki {
        dir: dir.to_path_buf(),
        ca: ca_files,
        apiserver,
        admin,
        controller_manager,
        service_account_key,
        service_account_public_key,
    })
}

/// Issues a client certificate for `user` (in `group`, if any) signed by the
/// CA of `pki`, written as `<stem>.crt`/`<stem>.key` into `pki.dir`: the
/// identities of the real node's kubelet, kube-scheduler and kube-proxy.
pub fn issue_client(
    pki: &Pki,
    stem: &str,
    user: &str,
    group: Option<&str>,
) -> Result<CertAndKey, CertError> {
    let what = "a client certificate";
    let ca_key = KeyPair::from_pem(&pki.ca.key_pem)
        .map_err(|source| CertError::Generate { what, source })?;
    // The issuer is named and keyed exactly as `generate` made the CA, so the
    // issued certificate's issuer and authority key id match the CA's.
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = subject(CA_NAME, None);
    let ca = Issuer::new(ca_params, ca_key);
    let mut params = client_params(user, group);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let key = new_key(what)?;
    let cert = params
        .signed_by(&key, &ca)
        .map_err(|source| CertError::Generate { what, source })?;
    write_pair(&pki.dir, stem, &cert.pem(), &key.serialize_pem())
}

fn new_key(what: &'static str) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| CertError::Generate { what, source })
}

fn subject(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

/// kube-apiserver maps a client certificate's CN to the user name and each O to a group.
fn client_params(user: &str, group: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(user, group);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// Signs a leaf certificate for a fresh key with the CA and writes both as `<stem>.crt`/`<stem>.key`.
fn issue(
    dir: &Path,
    stem: &str,
    what: &'static str,
    mut params: CertificateParams,
    ca: &CertifiedIssuer<'_, KeyPair>,
) -> Result<CertAndKey, CertError> {
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let key = new_key(what)?;
    let cert = params
        .signed_by(&key, ca)
        .map_err(|source| CertError::Generate { what, source })?;
    write_pair(dir, stem, &cert.pem(), &key.serialize_pem())
}

fn write_pair(
    dir: &Path,
    stem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<CertAndKey, CertError> {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    write_file(&cert, cert_pem, false)?;
    write_file(&key, key_pem, true)?;
    Ok(CertAndKey {
        cert,
        key,
        cert_pem: cert_pem.to_owned(),
        key_pem: key_pem.to_owned(),
    })
}

/// Writes `contents`, creating private keys with mode 0600 from the start so
/// they are never readable by others, not even briefly.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(path)?;
        file.write_all(contents.as_bytes())
    })();
    result.map_err(|source| CertError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_file_of_the_pki() {
        let dir =
            std::env::temp_dir().join(format!("drover-e2e-certs-test-{}", std::process::id()));
        let pki = generate(&dir).expect("PKI generation");
        for path in [
            &pki.ca.cert,
            &pki.ca.key,
            &pki.apiserver.cert,
            &pki.apiserver.key,
            &pki.admin.cert,
            &pki.admin.key,
            &pki.controller_manager.cert,
            &pki.controller_manager.key,
            &pki.service_account_key,
            &pki.service_account_public_key,
        ] {
            let text = fs::read_to_string(path).expect("PKI file readable");
            assert!(
                text.starts_with("-----BEGIN "),
                "{} is not PEM",
                path.display()
            );
        }
        let sa_pub = fs::read_to_string(&pki.service_account_public_key).expect("public key");
        assert!(sa_pub.contains("BEGIN PUBLIC KEY"));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
