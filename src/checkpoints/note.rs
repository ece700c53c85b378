//! The log's signing key and the notes it signs: a checkpoint is the C2SP tlog-checkpoint body
//! (origin, tree size, base64 tree head, then the `intent-heads` extension line) signed as a C2SP
//! signed note with Ed25519 (the `signed_note` crate). The private key lives only in its file
//! (0600) and in this process's memory: never in the database, a log line, or `Debug` output.

use std::path::Path;

use base64::Engine;
use eucora_projections::heads::IndexRoot;
use eucora_projections::merkle::Hash;
use signed_note::{Note, Signer, StandardSigner, StandardVerifier, VerifierList};

/// The name a generated key (and so the log's origin) gets unless one is given.
pub const DEFAULT_KEY_NAME: &str = "eucora";

/// Why a key or a checkpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the signing key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the signing key {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} does not hold a signing key (PRIVATE+KEY+<name>+<id>+<key>, as `eucora key generate` writes)")]
    Format { path: String },
    #[error("{0:?} is not a key name: use letters, digits and punctuation, without spaces or '+'")]
    Name(String),
    #[error("{0} is not a verifier key (<name>+<id>+<key>)")]
    Verifier(String),
}

/// The log's signing key: an Ed25519 key in the signed-note encoding.
pub struct SigningKey {
    signer: StandardSigner,
    verifier: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.verifier)
    }
}

impl SigningKey {
    /// Makes a new key named `name` and writes it to `path`, which must not exist yet, readable
    /// by its owner only (0600).
    pub fn create(path: &Path, name: &str) -> Result<SigningKey, KeyError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(KeyError::Name(name.to_string()));
        }
        let (skey, vkey) = signed_note::generate_key(&mut rand::rngs::OsRng, name);
        let write = |source| KeyError::Write {
            path: crate::domain::absolute(path),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(write)?;
        std::io::Write::write_all(&mut file, format!("{skey}\n").as_bytes()).map_err(write)?;
        file.sync_all().map_err(write)?;
        let signer = StandardSigner::new(&skey).map_err(|_| KeyError::Format {
            path: crate::domain::absolute(path),
        })?;
        Ok(SigningKey {
            signer,
            verifier: vkey,
        })
    }

    /// Reads a key file written by [`SigningKey::create`].
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: crate::domain::absolute(path),
            source,
        })?;
        let format = || KeyError::Format {
            path: crate::domain::absolute(path),
        };
        let skey = text.trim();
        let signer = StandardSigner::new(skey).map_err(|_| format())?;
        // The verifier key is the public half: name, id, and 0x01 ‖ the Ed25519 public key.
        // PRIVATE+KEY+<name>+<id>+<key>: the key's base64 may itself hold '+'.
        let seed = skey
            .splitn(5, '+')
            .nth(4)
            .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
            .filter(|k| k.len() == 33 && k[0] == 1)
            .ok_or_else(format)?;
        let secret: [u8; 32] = seed[1..].try_into().map_err(|_| format())?;
        let public = ed25519_dalek::SigningKey::from_bytes(&secret).verifying_key();
        let verifier = signed_note::new_ed25519_verifier_key(signer.name(), &public);
        Ok(SigningKey { signer, verifier })
    }

    /// The key's name: the log's origin line.
    pub fn name(&self) -> &str {
        self.signer.name()
    }

    /// The verifier key, `<name>+<id>+<key>`: what auditors are given.
    pub fn verifier_key(&self) -> &str {
        &self.verifier
    }

    /// The signed checkpoint of a tree of `size` leaves with head `root`, whose intents' heads
    /// have the index `heads`.
    pub fn sign_checkpoint(
        &self,
        size: u64,
        root: &Hash,
        heads: &IndexRoot,
    ) -> Result<String, String> {
        let text = checkpoint_text(self.name(), size, root, Some(heads));
        let mut note = Note::new(text.as_bytes(), &[]).map_err(|e| e.to_string())?;
        note.add_sigs(&[&self.signer]).map_err(|e| e.to_string())?;
        String::from_utf8(note.to_bytes()).map_err(|e| e.to_string())
    }

    /// A plain Ed25519 signature of `message` (the evidence manifest's DSSE signature).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.signer.sign(message).map_err(|e| e.to_string())
    }
}

/// The name of the checkpoint extension line that carries the intent-heads index.
pub const HEADS_EXTENSION: &str = "intent-heads";

/// The C2SP tlog-checkpoint body: origin, size and base64 root, each on its own line, then (when
/// given) the intent-heads extension line.
pub fn checkpoint_text(origin: &str, size: u64, root: &Hash, heads: Option<&IndexRoot>) -> String {
    let b64 = |h: &Hash| base64::engine::general_purpose::STANDARD.encode(h);
    let mut text = format!("{origin}\n{size}\n{}\n", b64(root));
    if let Some(heads) = heads {
        text.push_str(&format!(
            "{HEADS_EXTENSION} {} {}\n",
            heads.count,
            b64(&heads.root)
        ));
    }
    text
}

/// A checkpoint whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The intent-heads index it commits to; `None` for a checkpoint signed before there was one.
    pub heads: Option<IndexRoot>,
}

/// Verifies a signed checkpoint against a verifier key and reads its body.
pub fn open_checkpoint(note: &str, verifier_key: &str) -> Result<Checkpoint, String> {
    let verifier = StandardVerifier::new(verifier_key.trim())
        .map_err(|_| format!("{verifier_key:?} is not a verifier key"))?;
    let parsed =
        Note::from_bytes(note.as_bytes()).map_err(|e| format!("not a signed note: {e}"))?;
    parsed
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| format!("the checkpoint's signature does not verify with this key: {e}"))?;
    let text = std::str::from_utf8(parsed.text()).map_err(|_| "the checkpoint is not UTF-8")?;
    let mut lines = text.split('\n');
    let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
        return Err("the checkpoint body is not origin, size and root lines".into());
    };
    let number = |what: &str, text: &str| {
        text.parse::<u64>()
            .map_err(|_| format!("the checkpoint's {what} {text:?} is not a number"))
    };
    let hash = |what: &str, text: &str| -> Result<Hash, String> {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| format!("the checkpoint's {what} is not a base64 SHA-256 hash"))
    };
    // Extension lines follow the root; ours names the intent-heads index, others are skipped.
    let mut heads = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let mut words = line.split(' ');
        if words.next() == Some(HEADS_EXTENSION) {
            let (Some(count), Some(root), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!(
                    "the checkpoint's line {line:?} is not `{HEADS_EXTENSION} <count> <root>`"
                ));
            };
            heads = Some(IndexRoot {
                count: number("intent count", count)?,
                root: hash("intent-heads root", root)?,
            });
        }
    }
    Ok(Checkpoint {
        origin: origin.to_string(),
        size: number("size", size)?,
        root: hash("root", root)?,
        heads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use eucora_projections::merkle;

    /// C2SP signed-note's own example key, from the specification (and Go's sumdb/note).
    const SPEC_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const SPEC_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const SPEC_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
                             then you don't know what your problem is.\n\
                             \n\
                             — PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    fn spec_key() -> (tempdir::Dir, SigningKey) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("key");
        std::fs::write(&path, SPEC_SKEY).unwrap();
        let key = SigningKey::load(&path).unwrap();
        (dir, key)
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!("eucora-key-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn the_specifications_example_key_signs_its_example_note() {
        let (_dir, key) = spec_key();
        assert_eq!(key.verifier_key(), SPEC_VKEY);
        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let mut note = Note::new(text.as_bytes(), &[]).unwrap();
        note.add_sigs(&[&key.signer]).unwrap();
        assert_eq!(String::from_utf8(note.to_bytes()).unwrap(), SPEC_NOTE);
    }

    #[test]
    fn a_checkpoint_is_the_c2sp_body_signed_and_opens_only_with_its_key() {
        let (_dir, key) = spec_key();
        let root = merkle::leaf_hash(b"x");
        let heads = IndexRoot {
            count: 7,
            root: merkle::leaf_hash(b"y"),
        };
        let note = key.sign_checkpoint(42, &root, &heads).unwrap();
        let body = checkpoint_text("PeterNeumann", 42, &root, Some(&heads));
        assert_eq!(
            body.lines().nth(3),
            Some(
                format!(
                    "intent-heads 7 {}",
                    base64::engine::general_purpose::STANDARD.encode(heads.root)
                )
                .as_str()
            )
        );
        assert!(
            note.starts_with(&format!("{body}\n— PeterNeumann ")),
            "{note}"
        );
        let opened = open_checkpoint(&note, SPEC_VKEY).unwrap();
        assert_eq!(
            (
                opened.origin.as_str(),
                opened.size,
                opened.root,
                opened.heads
            ),
            ("PeterNeumann", 42, root, Some(heads))
        );
        // Another key, or an edited body, does not open.
        let dir = tempdir::Dir::new();
        let other = SigningKey::create(&dir.path().join("k"), "PeterNeumann").unwrap();
        assert!(open_checkpoint(&note, other.verifier_key()).is_err());
        let edited = note.replacen("\n42\n", "\n43\n", 1);
        assert!(open_checkpoint(&edited, SPEC_VKEY).is_err());
    }

    #[test]
    fn a_new_key_file_is_private_and_never_overwritten() {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("log.key");
        let key = SigningKey::create(&path, "eucora").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(key.verifier_key().starts_with("eucora+"));
        assert_eq!(
            SigningKey::load(&path).unwrap().verifier_key(),
            key.verifier_key()
        );
        assert!(matches!(
            SigningKey::create(&path, "eucora"),
            Err(KeyError::Write { .. })
        ));
        assert!(!format!("{key:?}").contains("PRIVATE"));
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            SigningKey::load(&path),
            Err(KeyError::Format { .. })
        ));
        assert!(matches!(
            SigningKey::create(&dir.path().join("x"), "has space"),
            Err(KeyError::Name(_))
        ));
    }
}
