//! The cluster key: the secret nm and every storage server share.
//!
//! Daemons prove to each other that they know it, both ways, during the
//! handshake (HMAC-SHA256 challenge-response over fresh nonces; the key
//! never crosses the wire), so a process without it can neither register as
//! a storage server, nor push content into one, nor pose as nm. Client
//! tickets are signed with a key derived from it, so every storage server
//! checks them without asking nm.

use crate::proto::Role;
use crate::ticket::TicketKey;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(…)")
    }
}

impl ClusterKey {
    pub fn new(bytes: Vec<u8>) -> io::Result<Self> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a cluster key needs at least {MIN_KEY_BYTES} bytes"),
            ));
        }
        Ok(ClusterKey(bytes))
    }

    /// Reads a key file (its bytes, trailing whitespace ignored).
    pub fn load(path: &Path) -> io::Result<Self> {
        let mut bytes = std::fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading the cluster key {}: {e}", path.display()),
            )
        })?;
        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.pop();
        }
        Self::new(bytes)
    }

    /// Writes a fresh random key (hex) to `path`, readable by its owner only.
    pub fn generate(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        io::Write::write_all(&mut file, hex.as_bytes())?;
        Self::new(hex.into_bytes())
    }

    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key size");
        mac.update(label);
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn role_bytes(role: Role) -> &'static [u8] {
        match role {
            Role::Client => b"client",
            Role::StorageServer => b"storage-server",
            Role::NameManager => b"name-manager",
        }
    }

    /// The proof that `role` named `name` knows the key, for this `nonce`.
    pub fn prove(&self, nonce: &[u8], role: Role, name: &str) -> Vec<u8> {
        self.mac(
            b"docs-proof",
            &[nonce, Self::role_bytes(role), name.as_bytes()],
        )
        .finalize()
        .into_bytes()
        .to_vec()
    }

    /// Checks a proof (in constant time).
    pub fn verify(&self, nonce: &[u8], role: Role, name: &str, proof: &[u8]) -> bool {
        self.mac(
            b"docs-proof",
            &[nonce, Self::role_bytes(role), name.as_bytes()],
        )
        .verify_slice(proof)
        .is_ok()
    }

    /// The key that signs client tickets, derived from the cluster key.
    pub fn ticket_key(&self) -> TicketKey {
        TicketKey::new(
            self.mac(b"docs-tickets", &[])
                .finalize()
                .into_bytes()
                .to_vec(),
        )
    }
}

/// The key a daemon runs with: the file given, else (unless `insecure`)
/// the per-user key ([`per_user_key`]), so daemons of one user find each
/// other and nobody else can pose as one. `insecure` without a file is the
/// only way to run without a key.
pub fn load_for(file: Option<&Path>, insecure: bool) -> io::Result<Option<ClusterKey>> {
    match file {
        Some(path) => ClusterKey::load(path).map(Some),
        None if insecure => {
            tracing::warn!(
                event = "insecure",
                "running without a cluster key: any process that can reach this daemon may pose as nm or as a storage server"
            );
            Ok(None)
        }
        None => {
            let (key, path) = per_user_key()?;
            tracing::info!(event = "cluster_key", path = %path.display(), "using this user's cluster key (give --cluster-key-file to choose another)");
            Ok(Some(key))
        }
    }
}

/// Where the per-user key lives: `$XDG_CONFIG_HOME/docspp/cluster.key`,
/// else `$HOME/.config/docspp/cluster.key`.
pub fn per_user_key_path() -> io::Result<std::path::PathBuf> {
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => std::path::PathBuf::from(home).join(".config"),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no cluster key: neither XDG_CONFIG_HOME nor HOME is set; give --cluster-key-file (or --insecure to run without a key)",
                ))
            }
        },
    };
    Ok(config.join("docspp").join("cluster.key"))
}

/// This user's cluster key, created on first use (in the spirit of
/// Erlang's cookie): a random key in a file only its owner may read, in a
/// folder only its owner may enter. A key file other users may read or
/// write is refused rather than trusted. Two daemons starting at once
/// agree on one key: the new file is written whole under a temp name and
/// linked into place, and whoever loses the race reads the winner's.
pub fn per_user_key() -> io::Result<(ClusterKey, std::path::PathBuf)> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let path = per_user_key_path()?;
    let named = |e: io::Error, what: &str, p: &Path| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
    };
    let dir = path.parent().expect("a file in a folder");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| named(e, "creating", dir))?;
    let dir_mode = std::fs::metadata(dir)
        .map_err(|e| named(e, "reading", dir))?
        .permissions()
        .mode();
    if dir_mode & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the folder of the cluster key {} may be written by other users (mode {:o}); `chmod 700` it",
                dir.display(),
                dir_mode & 0o777
            ),
        ));
    }
    if std::fs::symlink_metadata(&path).is_err() {
        let temp = dir.join(format!(
            ".cluster.key.{}.{:016x}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ));
        ClusterKey::generate(&temp).map_err(|e| named(e, "writing", &temp))?;
        let linked = std::fs::File::open(&temp)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::hard_link(&temp, &path));
        let _ = std::fs::remove_file(&temp);
        match linked {
            Ok(()) => {
                tracing::info!(event = "cluster_key_created", path = %path.display(), "created this user's cluster key (mode 0600)")
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(named(e, "creating", &path)),
        }
    }
    let stat = std::fs::symlink_metadata(&path).map_err(|e| named(e, "reading", &path))?;
    if !stat.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the cluster key {} is not a regular file (a symlink?); refusing it",
                path.display()
            ),
        ));
    }
    let mode = stat.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the cluster key {} may be read or changed by other users (mode {:o}); `chmod 600` it",
                path.display(),
                mode & 0o777
            ),
        ));
    }
    Ok((ClusterKey::load(&path)?, path))
}

/// A fresh random nonce for a challenge.
pub fn nonce() -> Vec<u8> {
    rand::random::<[u8; 32]>().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_the_key_the_nonce_the_role_and_the_name() {
        let key = ClusterKey::new(b"0123456789abcdef0123".to_vec()).unwrap();
        let other = ClusterKey::new(b"fedcba9876543210fedc".to_vec()).unwrap();
        let n = nonce();
        let proof = key.prove(&n, Role::StorageServer, "ss1");
        assert!(key.verify(&n, Role::StorageServer, "ss1", &proof));
        assert!(!other.verify(&n, Role::StorageServer, "ss1", &proof));
        assert!(!key.verify(&nonce(), Role::StorageServer, "ss1", &proof));
        assert!(!key.verify(&n, Role::NameManager, "ss1", &proof));
        assert!(!key.verify(&n, Role::StorageServer, "ss2", &proof));
        assert!(ClusterKey::new(b"short".to_vec()).is_err());
    }
}
