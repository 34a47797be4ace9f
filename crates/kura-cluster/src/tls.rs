//! The cluster's mutual TLS: a certificate authority that lives only in the coordinator's
//! enclave, for one start, and certifies a node's TLS key only after verifying that node's
//! evidence (which binds the key). Every gRPC and Flight connection of the cluster (executor to
//! scheduler, executor to executor for shuffles, coordinator to executor for results) is TLS
//! with a certificate of this authority on both ends; servers refuse anything else, so a
//! connection the host opens or redirects fails instead of reading or feeding a byte.

use std::sync::Arc;

use ballista_core::extension::EndpointOverrideFn;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SubjectPublicKeyInfo,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use zeroize::Zeroizing;

/// The name every node's certificate carries and every client checks: membership comes from
/// the authority, not from addresses the host assigns.
pub const SERVER_NAME: &str = "kura-cluster";

/// The name only `node`'s certificate carries besides [`SERVER_NAME`]: a client that must
/// reach one node in particular (the coordinator asking an executor to delete a job's files)
/// checks it, so a connection the host redirects to another member fails.
pub fn node_name(node: &str) -> Result<String, TlsError> {
    let label = !node.is_empty()
        && node.len() <= 63
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !node.starts_with('-')
        && !node.ends_with('-');
    if !label {
        return Err(TlsError(format!(
            "{node:?} is not a node name (lowercase letters, digits and hyphens)"
        )));
    }
    Ok(format!("{node}.{SERVER_NAME}"))
}

/// The common name of the coordinator's own certificate. The authority gives it to no other
/// node, so a server of the cluster knows the coordinator among its clients
/// ([`is_coordinator`]).
pub const COORDINATOR: &str = "coordinator";

/// Whether `certs` (a TLS peer's chain, leaf first, already verified against the authority)
/// are the coordinator's.
pub fn is_coordinator(certs: &[rustls::pki_types::CertificateDer<'_>]) -> bool {
    use x509_cert::der::Decode;
    certs
        .first()
        .and_then(|leaf| x509_cert::Certificate::from_der(leaf).ok())
        .is_some_and(|leaf| leaf.tbs_certificate.subject.to_string() == format!("CN={COORDINATOR}"))
}

#[derive(Debug, thiserror::Error)]
#[error("cluster TLS: {0}")]
pub struct TlsError(String);

fn tls(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

/// A node's TLS key pair, fresh at every start and never written anywhere.
pub struct NodeKey(KeyPair);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(<secret>)")
    }
}

impl NodeKey {
    pub fn generate() -> Result<Self, TlsError> {
        KeyPair::generate().map(Self).map_err(tls)
    }

    /// The public key (SubjectPublicKeyInfo, PEM): what evidence binds and the authority
    /// certifies.
    pub fn public_pem(&self) -> String {
        self.0.public_key_pem()
    }

    fn secret_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.0.serialize_pem())
    }
}

/// The coordinator's certificate authority for one start. Its key never leaves the enclave.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    pub fn new() -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kura cluster authority (one start)");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).map_err(tls)?.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The authority's certificate (PEM), which every node trusts.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for the public key `public_pem` (a node whose evidence the caller
    /// verified), valid as client and server under [`SERVER_NAME`]. Never one in the
    /// coordinator's name, which only [`Authority::coordinator`] gives.
    pub fn certify(&self, public_pem: &str, node: &str) -> Result<String, TlsError> {
        if node == COORDINATOR {
            return Err(TlsError(format!(
                "{COORDINATOR:?} is the coordinator's name"
            )));
        }
        self.issue(public_pem, node)
    }

    fn issue(&self, public_pem: &str, node: &str) -> Result<String, TlsError> {
        let public = SubjectPublicKeyInfo::from_pem(public_pem).map_err(tls)?;
        let mut params =
            CertificateParams::new(vec![SERVER_NAME.to_string(), node_name(node)?]).map_err(tls)?;
        params.distinguished_name.push(DnType::CommonName, node);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        Ok(params.signed_by(&public, &self.issuer).map_err(tls)?.pem())
    }

    /// The coordinator's own membership: a key and a certificate of this authority in the
    /// name [`COORDINATOR`].
    pub fn coordinator(&self) -> Result<Membership, TlsError> {
        let key = NodeKey::generate()?;
        let certificate = self.issue(&key.public_pem(), COORDINATOR)?;
        Ok(Membership::new(self.pem.clone(), certificate, &key))
    }
}

/// What a node needs to speak in the cluster: the authority it trusts, its certificate, and its
/// key.
#[derive(Clone)]
pub struct Membership {
    authority: String,
    certificate: String,
    key: Arc<Zeroizing<String>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").finish_non_exhaustive()
    }
}

impl Membership {
    pub fn new(authority: String, certificate: String, key: &NodeKey) -> Self {
        Self {
            authority,
            certificate,
            key: Arc::new(key.secret_pem()),
        }
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.certificate, self.key.as_bytes())
    }

    /// A server that accepts only clients with a certificate of the authority.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(Certificate::from_pem(&self.authority))
            .client_auth_optional(false)
    }

    /// A client that accepts only servers with a certificate of the authority, and shows its own.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.authority))
            .identity(self.identity())
            .domain_name(SERVER_NAME)
    }

    /// [`Membership::client`] that accepts only `node`'s certificate ([`node_name`]).
    pub fn client_for(&self, node: &str) -> Result<ClientTlsConfig, TlsError> {
        Ok(self.client().domain_name(node_name(node)?))
    }

    /// Ballista's hook for every endpoint it creates. tonic speaks TLS only to `https` URIs
    /// (Ballista builds `http` ones) and would otherwise connect in the clear, so the endpoint is
    /// rebuilt as `https` with this membership's TLS. A server of the cluster refuses any
    /// connection without it in any case.
    pub fn endpoint_override(&self) -> EndpointOverrideFn {
        let tls = self.client();
        Arc::new(move |endpoint: Endpoint| {
            let uri = endpoint.uri();
            let authority = uri
                .authority()
                .ok_or("a cluster endpoint without an address")?
                .clone();
            let secure = format!("https://{authority}{}", uri.path());
            let endpoint = Endpoint::from_shared(secure)?
                .connect_timeout(std::time::Duration::from_secs(20))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(std::time::Duration::from_secs(30))
                .keep_alive_while_idle(true)
                .tls_config(tls.clone())?;
            Ok(endpoint)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate names the key it was asked for and chains to the authority; another
    /// authority's certificate does not.
    #[test]
    fn the_authority_certifies_the_key_it_was_given() {
        let authority = Authority::new().unwrap();
        let key = NodeKey::generate().unwrap();
        let pem = authority.certify(&key.public_pem(), "executor-1").unwrap();
        let der = pem_der(&pem);
        let cert = <x509_cert::Certificate as x509_cert::der::Decode>::from_der(&der).unwrap();
        let spki =
            x509_cert::der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info).unwrap();
        assert_eq!(spki, pem_der(&key.public_pem()));
        let issuer = pem_der(authority.pem());
        let ca = <x509_cert::Certificate as x509_cert::der::Decode>::from_der(&issuer).unwrap();
        assert_eq!(cert.tbs_certificate.issuer, ca.tbs_certificate.subject);
        assert!(Authority::new().unwrap().certify("not a key", "x").is_err());
        // Only the coordinator's own membership carries its name.
        assert!(authority.certify(&key.public_pem(), COORDINATOR).is_err());
        let own = authority.coordinator().unwrap();
        let leaf = pem_der(&own.certificate);
        assert!(is_coordinator(&[leaf.into()]));
        assert!(!is_coordinator(&[der.into()]));
        assert!(!is_coordinator(&[]));
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }
}
