//! A throw-away test PKI made with the `openssl` CLI (installed by `cargo
//! xtask setup`): a root CA and a server certificate for `relay.lab` (plus
//! `localhost`, `127.0.0.1` and the VIP), ECDSA P-256 or RSA-2048, in a fresh
//! temporary folder that is removed on drop.

use std::path::{Path, PathBuf};

use crate::{LabError, addr, run};

/// The server name of the lab's TLS service.
pub const SERVER_NAME: &str = "relay.lab";

/// The key type of the CA and the server certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256 (prime256v1), signed with SHA-256.
    EcdsaP256,
    /// RSA, 2048 bits, signed with SHA-256.
    Rsa2048,
}

impl KeyKind {
    fn genpkey_args(self) -> &'static [&'static str] {
        match self {
            KeyKind::EcdsaP256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyKind::Rsa2048 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyKind::EcdsaP256 => "ecdsa",
            KeyKind::Rsa2048 => "rsa",
        }
    }
}

/// The generated files. The folder and everything in it go away on drop.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
    kind: KeyKind,
    /// The server's chain, leaf first (PEM): what a TLS server presents.
    pub cert_chain: PathBuf,
    /// The server's private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// The root CA certificate (PEM): what clients trust (`lab-load --ca`).
    pub ca: PathBuf,
}

/// Validity of every certificate: long enough never to matter.
const DAYS: &str = "3650";

impl TestPki {
    /// Generates a CA and a server certificate of `kind` into a new folder
    /// under the system temporary directory.
    pub fn generate(kind: KeyKind) -> Result<TestPki, LabError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "relay-lab-pki-{}-{}-{}",
            kind.name(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| LabError::Spawn {
            cmd: format!("mkdir {}", dir.display()),
            source,
        })?;
        let pki = TestPki {
            kind,
            cert_chain: dir.join("server-chain.pem"),
            key: dir.join("server.key"),
            ca: dir.join("ca.pem"),
            dir,
        };
        pki.build()?;
        Ok(pki)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn build(&self) -> Result<(), LabError> {
        let kind = self.kind;
        let ca_key = self.path("ca.key");
        let ca = self.ca.to_string_lossy().into_owned();
        let mut genpkey = vec!["genpkey"];
        genpkey.extend_from_slice(kind.genpkey_args());
        run("openssl", &[&genpkey[..], &["-out", &ca_key]].concat())?;
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &ca_key,
                "-sha256",
                "-days",
                DAYS,
                "-subj",
                "/CN=relay-lab test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-out",
                &ca,
            ],
        )?;
        let sans = format!(
            "DNS:{SERVER_NAME},DNS:localhost,IP:127.0.0.1,IP:{}",
            addr::VIP
        );
        self.sign(kind, "server", SERVER_NAME, &sans, "serverAuth")?;
        Ok(())
    }

    /// A certificate and key from this PKI's CA for relay `name` of a
    /// cluster (DNS name `name`, for both ends of a backplane connection):
    /// `(chain, key)`. With the CA as the cluster CA, relays trust each other.
    pub fn issue_relay(&self, name: &str) -> Result<(PathBuf, PathBuf), LabError> {
        self.sign(
            self.kind,
            &format!("relay-{name}"),
            name,
            &format!("DNS:{name}"),
            "serverAuth,clientAuth",
        )
    }

    /// Signs a new key's certificate with the CA into `<file>-chain.pem` and
    /// `<file>.key`.
    fn sign(
        &self,
        kind: KeyKind,
        file: &str,
        cn: &str,
        sans: &str,
        eku: &str,
    ) -> Result<(PathBuf, PathBuf), LabError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SERIAL: AtomicU32 = AtomicU32::new(2);
        let ca_key = self.path("ca.key");
        let ca = self.ca.to_string_lossy().into_owned();
        let key = self.path(&format!("{file}.key"));
        let chain = self.path(&format!("{file}-chain.pem"));
        let csr = self.path(&format!("{file}.csr"));
        let ext = self.path(&format!("{file}.ext"));
        let mut genpkey = vec!["genpkey"];
        genpkey.extend_from_slice(kind.genpkey_args());
        run("openssl", &[&genpkey[..], &["-out", &key]].concat())?;
        run(
            "openssl",
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                &format!("/CN={cn}"),
                "-out",
                &csr,
            ],
        )?;
        let key_usage = match kind {
            KeyKind::EcdsaP256 => "digitalSignature",
            KeyKind::Rsa2048 => "digitalSignature,keyEncipherment",
        };
        let extensions = format!(
            "subjectAltName={sans}\n\
             basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,{key_usage}\n\
             extendedKeyUsage={eku}\n"
        );
        std::fs::write(&ext, extensions).map_err(|source| LabError::Spawn {
            cmd: format!("write {ext}"),
            source,
        })?;
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed).to_string();
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-set_serial",
                &serial,
                "-days",
                DAYS,
                "-sha256",
                "-extfile",
                &ext,
                "-out",
                &chain,
            ],
        )?;
        for leftover in [&csr, &ext] {
            let _ = std::fs::remove_file(leftover);
        }
        Ok((PathBuf::from(chain), PathBuf::from(key)))
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
