//! Signed notes (golang.org/x/mod/sumdb/note): the checksum database signs
//! its tree heads with Ed25519; a verifier key `name+hash+base64(0x01 || key)`
//! checks them.

use base64::Engine;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed verifier key")]
    MalformedKey,
    #[error("verifier key hash does not match its name and key")]
    KeyHash,
    #[error("unknown verifier algorithm")]
    Algorithm,
    #[error("malformed note")]
    Malformed,
    #[error("invalid signature for key {0}")]
    BadSignature(String),
    #[error("note has no verifiable signature by {0}")]
    Unverified(String),
}

/// A note verifier from a verifier key (the GOSUMDB key form).
#[derive(Debug, Clone)]
pub struct Verifier {
    pub name: String,
    pub hash: u32,
    key: VerifyingKey,
}

fn key_hash(name: &str, key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update(key);
    let sum = h.finalize();
    u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]])
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(char::is_whitespace) && !name.contains('+')
}

impl Verifier {
    pub fn new(vkey: &str) -> Result<Verifier, NoteError> {
        let (name, rest) = vkey.split_once('+').ok_or(NoteError::MalformedKey)?;
        let (hash16, key64) = rest.split_once('+').ok_or(NoteError::MalformedKey)?;
        let hash = u32::from_str_radix(hash16, 16).map_err(|_| NoteError::MalformedKey)?;
        let key = base64::engine::general_purpose::STANDARD.decode(key64).map_err(|_| NoteError::MalformedKey)?;
        if hash16.len() != 8 || !valid_name(name) || key.is_empty() {
            return Err(NoteError::MalformedKey);
        }
        if hash != key_hash(name, &key) {
            return Err(NoteError::KeyHash);
        }
        if key[0] != 1 {
            return Err(NoteError::Algorithm);
        }
        let bytes: [u8; 32] = key[1..].try_into().map_err(|_| NoteError::MalformedKey)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| NoteError::MalformedKey)?;
        Ok(Verifier { name: name.to_string(), hash, key })
    }

    /// Checks `msg` (text, blank line, signature lines `— name base64`) and
    /// returns its text when this verifier's signature is on it and valid.
    /// Signatures by other keys are ignored, as the go command does.
    pub fn open<'a>(&self, msg: &'a str) -> Result<&'a str, NoteError> {
        if msg.chars().any(|c| c < ' ' && c != '\n') {
            return Err(NoteError::Malformed);
        }
        let split = msg.rfind("\n\n").ok_or(NoteError::Malformed)?;
        let (text, sigs) = (&msg[..split + 1], &msg[split + 2..]);
        if sigs.is_empty() || !sigs.ends_with('\n') {
            return Err(NoteError::Malformed);
        }
        let mut verified = false;
        for (count, line) in sigs.lines().enumerate() {
            if count >= 100 {
                return Err(NoteError::Malformed);
            }
            let line = line.strip_prefix("\u{2014} ").ok_or(NoteError::Malformed)?;
            let (name, b64) = line.split_once(' ').ok_or(NoteError::Malformed)?;
            let sig = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| NoteError::Malformed)?;
            if !valid_name(name) || sig.len() < 5 {
                return Err(NoteError::Malformed);
            }
            let hash = u32::from_be_bytes([sig[0], sig[1], sig[2], sig[3]]);
            if name != self.name || hash != self.hash {
                continue;
            }
            let sig = Signature::from_slice(&sig[4..]).map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            self.key.verify(text.as_bytes(), &sig).map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            verified = true;
        }
        if verified {
            Ok(text)
        } else {
            Err(NoteError::Unverified(self.name.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // From x/mod/sumdb/note's example_test.go / note_test.go.
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const MSG: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn verifies_x_mod_example_note() {
        let v = Verifier::new(VKEY).expect("key");
        assert_eq!(v.name, "PeterNeumann");
        let text = v.open(MSG).expect("verified");
        assert!(text.starts_with("If you think"));
        // A changed text, a changed signature, a stranger's key.
        assert!(v.open(&MSG.replace("answer", "question")).is_err());
        assert!(v.open(&MSG.replace("x08go", "x08gp")).is_err());
        assert!(matches!(
            v.open("text\n\n\u{2014} Other AAAAAAAA\n"),
            Err(NoteError::Malformed) | Err(NoteError::Unverified(_))
        ));
        assert!(v.open("no signature").is_err());
        assert!(
            Verifier::new("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").is_err(),
            "hash mismatch"
        );
        assert!(Verifier::new("garbage").is_err());
        // The go command's built-in key (cmd/go/internal/modfetch/key.go).
        let v = Verifier::new("sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8")
            .expect("sum.golang.org key");
        assert_eq!((v.name.as_str(), v.hash), ("sum.golang.org", 0x033de0ae));
    }
}
